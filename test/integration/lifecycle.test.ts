/** Container lifecycle: cleanup, signals, detaching and finding containers again. */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { Runtime } from "../../agent/runtime/runtime.js";
import { loadNative } from "../../agent/system/native.js";
import { fleetlet, fleetletAsync } from "../support/fleetlet-cli.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";

let root: string;
const rootfs = inject("busyboxRootfs");

beforeAll(() => {
  root = freshRoot();
});
afterAll(async () => {
  await cleanupRoot(root);
});

/** A digest of every path, type, mode, size and link target under dir. */
function treeDigest(dir: string): string {
  const h = createHash("sha256");
  const walk = (d: string) => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      const st = lstatSync(p);
      h.update(`${p}\0${st.mode}\0${st.size}\0${st.mtimeMs}\0`);
      if (st.isSymbolicLink()) h.update(readlinkSync(p));
      else if (st.isDirectory()) walk(p);
      else h.update(readFileSync(p));
    }
  };
  walk(dir);
  return h.digest("hex");
}

function shimProcesses(): string[] {
  return readdirSync("/proc")
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        return readFileSync(`/proc/${p}/cmdline`, "utf8").includes(root);
      } catch {
        return false; // exited while we looked
      }
    });
}

describe("container lifecycle", () => {
  it("leaves the rootfs unmodified and nothing behind after --rm", () => {
    const before = treeDigest(rootfs);
    const r = fleetlet(root, [
      "run",
      "--rm",
      "--name",
      "scratch",
      "--memory",
      "64Mi",
      "--rootfs",
      rootfs,
      "--",
      "/bin/sh",
      "-c",
      "rm /bin/ls; echo new > /etc/new; chmod 777 /etc/passwd; mkdir -p /var/x",
    ]);
    expect(r.status).toBe(0);
    expect(treeDigest(rootfs)).toBe(before);
    expect(existsSync(join(root, "containers", "scratch"))).toBe(false);
    const runtime = new Runtime({ root });
    for (const dir of runtime.cgroups.locate("scratch").dirs.values()) expect(existsSync(dir)).toBe(false);
    expect(readFileSync("/proc/self/mountinfo", "utf8")).not.toContain(root);
    expect(shimProcesses()).toEqual([]);
  });

  it("fails a start whose shim cannot be spawned with the reason, leaving the container created and no cgroup", async () => {
    const runtime = new Runtime({ root, native: { ...loadNative(), shimPath: join(root, "no-such-shim") } });
    const { id } = runtime.create({ layers: [rootfs], command: ["/bin/true"], resources: { memory: "64Mi" } });
    await expect(runtime.start(id)).rejects.toMatchObject({
      code: "E_RUNTIME",
      exitCode: 125,
      message: expect.stringMatching(/spawn shim `.*no-such-shim`: .*no such file or directory/i),
    });
    expect(runtime.inspect(id).status).toBe("created");
    for (const dir of runtime.cgroups.locate(id).dirs.values()) expect(existsSync(dir)).toBe(false);
    await runtime.delete(id);
  });

  it("stops the container when fleetlet run gets SIGTERM", async () => {
    const child = fleetletAsync(root, [
      "run",
      "--rm",
      "--name",
      "sigterm",
      "--rootfs",
      rootfs,
      "--",
      "/bin/sh",
      "-c",
      "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.1; done",
    ]);
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => {
      out += d;
    });
    child.stderr.on("data", (d) => {
      err += d;
    });
    await new Promise<void>((resolve) => child.stdout.on("data", () => out.includes("ready") && resolve()));
    child.kill("SIGTERM");
    const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
    expect(out).toContain("got-term");
    expect(code, err).toBe(7);
    expect(existsSync(join(root, "containers", "sigterm"))).toBe(false);
  });

  it("kills a container that ignores the stop signal once the timeout passes", () => {
    expect(
      fleetlet(root, ["run", "-d", "--name", "stubborn", "--rootfs", rootfs, "--", "/bin/sleep", "600"]).status,
    ).toBe(0);
    const t0 = Date.now();
    const r = fleetlet(root, ["stop", "-t", "1", "stubborn"]);
    expect(r.stdout).toBe("stubborn exited with 137\n");
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1000);
    expect(fleetlet(root, ["rm", "stubborn"]).status).toBe(0);
  });

  it("keeps a detached container running after its launcher exits, and a new process finds and waits for it", async () => {
    const r = fleetlet(root, [
      "run",
      "-d",
      "--name",
      "bg",
      "--rootfs",
      rootfs,
      "--",
      "/bin/sh",
      "-c",
      "echo started; sleep 600",
    ]);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe("bg\n");
    const ps = fleetlet(root, ["ps"]);
    expect(ps.stdout).toMatch(/^bg\s+Up since/m);
    const fresh = new Runtime({ root });
    expect(fresh.inspect("bg").status).toBe("running");
    const waited = fresh.wait("bg");
    expect(fleetlet(root, ["kill", "-s", "KILL", "bg"]).status).toBe(0);
    const exit = await waited;
    expect(exit.signal).toBe(9);
    expect(exit.exitCode).toBe(137);
    expect(fleetlet(root, ["logs", "bg"]).stdout).toBe("started\n");
    expect(fleetlet(root, ["ps", "-a"]).stdout).toMatch(/^bg\s+Exited \(137\)/m);
    expect(fleetlet(root, ["rm", "bg"]).status).toBe(0);
  });

  it("refuses to remove a running container unless forced", () => {
    expect(fleetlet(root, ["run", "-d", "--name", "busy", "--rootfs", rootfs, "--", "/bin/sleep", "600"]).status).toBe(
      0,
    );
    const r = fleetlet(root, ["rm", "busy"]);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("container busy is running");
    expect(fleetlet(root, ["rm", "-f", "busy"]).status).toBe(0);
    expect(fleetlet(root, ["ps", "-a"]).stdout).not.toMatch(/^busy/m);
  });

  it("tails logs by lines", () => {
    const r = fleetlet(root, [
      "run",
      "--name",
      "chatty",
      "--rootfs",
      rootfs,
      "--",
      "/bin/sh",
      "-c",
      "for i in 1 2 3 4 5; do echo line$i; done",
    ]);
    expect(r.stdout).toBe("line1\nline2\nline3\nline4\nline5\n");
    expect(fleetlet(root, ["logs", "--tail", "2", "chatty"]).stdout).toBe("line4\nline5\n");
    expect(fleetlet(root, ["rm", "chatty"]).status).toBe(0);
  });

  it("rotates a chatty container's log by size and keeps the newest output", async () => {
    const runtime = new Runtime({ root });
    const { id } = runtime.create({
      layers: [rootfs],
      command: [
        "/bin/sh",
        "-c",
        "i=0; while [ $i -lt 400 ]; do echo line-$i-0123456789012345678901234567890123456789; i=$((i+1)); done",
      ],
      log: { maxBytes: 4096, keep: 1 },
    });
    await runtime.start(id);
    expect((await runtime.wait(id)).exitCode).toBe(0);
    const dir = join(root, "containers", id);
    expect(statSync(join(dir, "container.log")).size).toBeLessThanOrEqual(4096);
    expect(statSync(join(dir, "container.log.1")).size).toBeLessThanOrEqual(4096);
    expect(existsSync(join(dir, "container.log.2"))).toBe(false);
    expect(runtime.logs(id, { tail: 1 })).toMatch(/^line-399-/);
    await runtime.delete(id);
  });

  it("never signals a process that merely reuses a container's pid", async () => {
    const { core } = loadNative();
    const child = spawn("/bin/sleep", ["30"]);
    await new Promise((resolve) => child.on("spawn", resolve));
    const start = core.startTime(child.pid!)!;
    expect(start).toBeGreaterThan(0n);
    // Same pid, another start time: taken for a different process, left alone.
    expect(core.signalProcess(child.pid!, start + 1n, 15)).toBe(false);
    expect(child.exitCode).toBeNull();
    expect(core.signalProcess(child.pid!, start, 15)).toBe(true);
    const signal = await new Promise((resolve) => child.on("exit", (_c, s) => resolve(s)));
    expect(signal).toBe("SIGTERM");
  });
});

describe("a state root being removed", () => {
  it("takes its containers' cgroup parent with it, but never one that still holds a container", async () => {
    const other = freshRoot();
    const runtime = new Runtime({ root: other });
    const { id } = runtime.create({ layers: [rootfs], command: ["/bin/sleep", "600"], resources: { memory: "32Mi" } });
    await runtime.start(id);
    const memoryParent = dirname(runtime.cgroups.locate(id).dirs.get("memory") ?? "");
    expect(memoryParent).toMatch(/\/fleetlet-[0-9a-f]{12}$/);
    expect(existsSync(memoryParent)).toBe(true);
    expect(runtime.cgroups.removeParent()).not.toContain(memoryParent); // a container is still inside
    expect(existsSync(join(memoryParent, id))).toBe(true);
    await cleanupRoot(other);
    expect(existsSync(memoryParent)).toBe(false);
  });
});
