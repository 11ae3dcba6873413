/**
 * A container's writable layer is an overlay mounted `volatile` (Linux
 * 5.10): it is mounted once and thrown away after a crash, so it is never
 * synced, and a container's exit no longer syncs the host filesystem under
 * it and flushes the disk. A kernel without the option refuses it with
 * EINVAL, and the overlay is then mounted without it: strace injects that
 * refusal here, and `overlaySync` forces the older path.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { Runtime } from "../../agent/runtime/runtime.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";
import { waitFor } from "../support/wait-for.js";

const rootfs = inject("busyboxRootfs");
const dist = new URL("../../dist/agent/", import.meta.url).pathname;
let root: string;
const logs = mkdtempSync(join(tmpdir(), "fleetlet-strace-"));

beforeAll(() => {
  if (spawnSync("strace", ["-V"]).status !== 0) throw new Error("strace is missing (Debian package strace)");
  root = freshRoot();
});
afterAll(async () => {
  await cleanupRoot(root);
  rmSync(logs, { recursive: true, force: true });
});

/** The super options of the container's `/`, as its init sees them. */
const rootOptions = (pid: number | undefined) => {
  expect(pid).toBeGreaterThan(0);
  const line = readFileSync(`/proc/${pid}/mountinfo`, "utf8").split("\n")[0]!;
  expect(line).toMatch(/ \/ \/ .* - overlay overlay /);
  return line.split(" - overlay overlay ")[1]!.split(",");
};

describe("a container's writable layer", () => {
  it("is mounted volatile, keeps what the container writes while it runs, and is erased whole with it", async () => {
    const runtime = new Runtime({ root });
    const c = runtime.create({ layers: [rootfs], command: ["/bin/sh", "-c", "echo kept > /note; sync; sleep 30"] });
    const { pid } = await runtime.start(c.id);
    expect(rootOptions(pid).some((o) => /^(fsync=)?volatile$/.test(o))).toBe(true);
    const note = join(root, "containers", c.id, "upper", "fs", "note");
    // The shell creates the file before it writes to it: wait for the write, not the name.
    const content = () => (existsSync(note) ? readFileSync(note, "utf8") : "");
    await waitFor("the container's note", () => content() === "kept\n");
    // The overlay marks its work dir (a mode-0 work/incompat/volatile/dirty): the removal takes that too.
    expect(existsSync(join(root, "containers", c.id, "work", "work", "incompat", "volatile", "dirty"))).toBe(true);
    await runtime.delete(c.id, { force: true });
    await runtime.settled();
    expect(readdirSync(join(root, "containers")).filter((n) => n.includes(c.id))).toEqual([]);
  });

  it("is mounted without volatile where forced to the older kernels' path", async () => {
    const runtime = new Runtime({ root, overlaySync: true });
    const c = runtime.create({ layers: [rootfs], command: ["/bin/sleep", "30"] });
    const { pid } = await runtime.start(c.id);
    expect(rootOptions(pid).filter((o) => o.includes("volatile"))).toEqual([]);
    await runtime.delete(c.id, { force: true });
  });

  it("is mounted without volatile when the kernel refuses the option, as one before 5.10 does", () => {
    // The init's mounts: its propagation first, then the overlay, which strace fails with EINVAL.
    const script = `
      const { Runtime } = await import(${JSON.stringify(`${dist}runtime/runtime.js`)});
      const { readFileSync } = await import("node:fs");
      const runtime = new Runtime({ root: ${JSON.stringify(root)} });
      const c = runtime.create({ layers: [${JSON.stringify(rootfs)}], command: ["/bin/sleep", "30"] });
      const { pid } = await runtime.start(c.id);
      const mountinfo = readFileSync("/proc/" + pid + "/mountinfo", "utf8");
      await runtime.delete(c.id, { force: true });
      console.log(JSON.stringify({ mountinfo }));
    `;
    const log = join(logs, "mount.log");
    const strace = ["-f", "-qq", "-s", "4096", "-e", "trace=mount", "-e", "inject=mount:error=EINVAL:when=2"];
    const r = spawnSync("strace", [...strace, "-o", log, process.execPath, "--input-type=module", "-e", script], {
      encoding: "utf8",
      timeout: 60_000,
    });
    expect(r.status, r.stderr).toBe(0);
    const overlays = readFileSync(log, "utf8")
      .split("\n")
      .filter((l) => l.includes('"overlay"'));
    expect(overlays).toHaveLength(2);
    expect(overlays[0]).toMatch(/,volatile".* = -1 EINVAL .*\(INJECTED\)$/);
    expect(overlays[1]).not.toContain("volatile");
    expect(overlays[1]).toMatch(/ = 0$/);
    const { mountinfo } = JSON.parse(r.stdout) as { mountinfo: string };
    expect(mountinfo.split("\n")[0]).toMatch(/ - overlay overlay /);
    expect(mountinfo.split("\n")[0]).not.toContain("volatile");
  });
});
