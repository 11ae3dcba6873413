/**
 * A container's command and environment hold at most 256 entries each (the
 * shim's fixed lists, which also end argv and envp with their NULL): exactly
 * 256 run as given, 257 are refused with the limit named, both at start and
 * for a command run in a running container.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { Runtime } from "../../agent/runtime/runtime.js";
import { fleetlet } from "../support/fleetlet-cli.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";

let root: string;
const rootfs = inject("busyboxRootfs");
const words = (n: number) => Array.from({ length: n }, (_, i) => `w${i}`);
/** PATH, HOSTNAME and HOME given, so the runtime adds none: `n` entries in all. */
const envFlags = (n: number) =>
  [...["PATH=/bin", "HOSTNAME=box", "HOME=/"], ...Array.from({ length: n - 3 }, (_, i) => `E${i}=${i}`)].flatMap(
    (e) => ["-e", e],
  );

beforeAll(() => {
  root = freshRoot();
});
afterAll(async () => {
  await cleanupRoot(root);
});

describe("256 command arguments and environment entries", () => {
  it("runs a command of exactly 256 arguments", () => {
    const r = fleetlet(root, ["run", "--rm", "--rootfs", rootfs, "--", "/bin/echo", ...words(255)]);
    expect(r.stderr).toBe("");
    expect(r.stdout).toBe(`${words(255).join(" ")}\n`);
  });

  it("refuses 257 arguments, naming the limit", () => {
    const r = fleetlet(root, ["run", "--rm", "--rootfs", rootfs, "--", "/bin/echo", ...words(256)]);
    expect(r.status).toBe(125);
    expect(r.stderr).toContain("too many command arguments (at most 256)");
  });

  it("passes exactly 256 environment entries", () => {
    const r = fleetlet(root, [
      "run",
      "--rm",
      "--rootfs",
      rootfs,
      ...envFlags(256),
      "--",
      "/bin/cat",
      "/proc/self/environ",
    ]);
    expect(r.stderr).toBe("");
    expect(r.stdout.split("\0").filter(Boolean)).toHaveLength(256);
  });

  it("refuses 257 environment entries, naming the limit", () => {
    const r = fleetlet(root, ["run", "--rm", "--rootfs", rootfs, ...envFlags(257), "--", "/bin/true"]);
    expect(r.status).toBe(125);
    expect(r.stderr).toContain("too many environment entries (at most 256)");
  });

  it("runs 256 arguments in a running container, and refuses 257", async () => {
    const runtime = new Runtime({ root });
    const c = runtime.create({ layers: [rootfs], command: ["/bin/sleep", "600"] });
    await runtime.start(c.id);
    try {
      const ok = await runtime.exec(c.id, ["/bin/echo", ...words(255)]);
      expect(ok).toEqual({ exitCode: 0, output: `${words(255).join(" ")}\n` });
      const refused = await runtime.exec(c.id, ["/bin/echo", ...words(256)]);
      expect(refused.exitCode).toBe(125);
      expect(refused.output).toContain("too many command arguments (at most 256)");
    } finally {
      await runtime.delete(c.id, { force: true });
    }
  });
});
