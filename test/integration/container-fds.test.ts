/**
 * The descriptors a container's command starts with: stdin, stdout and
 * stderr, nothing else. The shim itself is handed the status pipe (fd 3) and
 * its config memfd (fd 4); on a kernel without close_range's
 * CLOSE_RANGE_CLOEXEC (before 5.11) it must find and mark them by listing
 * /proc/self/fd. Older kernels are emulated with a seccomp filter around
 * `fleetlet run` (test/support/old-kernel.c) that answers close_range as they
 * would.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { Runtime } from "../../agent/runtime/runtime.js";
import { FLEETLET_BIN, fleetlet } from "../support/fleetlet-cli.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";

let root: string;
let tools: string;
const rootfs = inject("busyboxRootfs");

/**
 * The container's pid 1 is its command as exec'd; `ls`, a child of it, lists
 * pid 1's descriptors, so the one ls opens for the listing is not among them.
 */
const LIST_INIT_FDS = ["/bin/sh", "-c", "ls /proc/1/fd; true"];

function fdNumbers(listing: string): number[] {
  return listing
    .split(/\s+/)
    .filter(Boolean)
    .map(Number)
    .sort((a, b) => a - b);
}

beforeAll(() => {
  root = freshRoot();
  tools = mkdtempSync(join(tmpdir(), "fleetlet-old-kernel-"));
  const source = fileURLToPath(new URL("../support/old-kernel.c", import.meta.url));
  execFileSync("gcc", ["-O1", "-o", join(tools, "old-kernel"), source]);
});
afterAll(async () => {
  await cleanupRoot(root);
  rmSync(tools, { recursive: true, force: true });
});

describe("descriptors a container starts with", () => {
  it("are only 0, 1 and 2, marked by close_range on this kernel", () => {
    const r = fleetlet(root, ["run", "--rm", "--rootfs", rootfs, "--", ...LIST_INIT_FDS]);
    expect(r.stderr).toBe("");
    expect(fdNumbers(r.stdout)).toEqual([0, 1, 2]);
  });

  it("are only 0, 1 and 2 when the shim is made to list /proc/self/fd instead", async () => {
    const runtime = new Runtime({ root, fdScan: true });
    const c = runtime.create({ layers: [rootfs], command: LIST_INIT_FDS });
    await runtime.start(c.id);
    const exit = await runtime.wait(c.id);
    const output = runtime.logs(c.id);
    await runtime.delete(c.id);
    expect(exit.exitCode).toBe(0);
    expect(fdNumbers(output)).toEqual([0, 1, 2]);
  });

  it.each([
    ["5.10", "Invalid argument", "knows close_range but not CLOSE_RANGE_CLOEXEC"],
    ["5.8", "Function not implemented", "has no close_range"],
  ])("are only 0, 1 and 2 on an emulated %s kernel, which answers %s (it %s)", (version, answer) => {
    const oldKernel = join(tools, "old-kernel");
    // The emulation holds: under its filter, close_range with the flag fails as that kernel's would.
    expect(execFileSync(oldKernel, [version, "--probe"], { encoding: "utf8" })).toBe(`${answer}\n`);
    const r = spawnSync(
      oldKernel,
      [
        version,
        "--",
        process.execPath,
        FLEETLET_BIN,
        "--root",
        root,
        "run",
        "--rm",
        "--rootfs",
        rootfs,
        "--",
        ...LIST_INIT_FDS,
      ],
      { encoding: "utf8", timeout: 60_000 },
    );
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(fdNumbers(r.stdout)).toEqual([0, 1, 2]);
  });
});
