/**
 * Revoking a device's rule from a running container on the v1 devices
 * controller (the host's own layout when it is hybrid or v1). The
 * controller keeps one entry per type and major:minor, with the access of
 * every allow written for it; a `devices.deny` takes its access away from
 * that entry. So a device that goes must take away only what no other
 * device, and no default rule, still needs of the same numbers.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { detectCgroupLayout } from "../../agent/runtime/cgroup-layout.js";
import { Runtime } from "../../agent/runtime/runtime.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";

const rootfs = inject("busyboxRootfs");
let root: string;
let work: string;
let devRoot: string;

function mknod(name: string, major: number, minor: number): void {
  const r = spawnSync("mknod", ["-m", "666", join(devRoot, name), "c", String(major), String(minor)], {
    encoding: "utf8",
  });
  if (r.status !== 0) throw new Error(`mknod ${name}: ${r.stderr}`);
}

beforeAll(() => {
  root = freshRoot();
  work = mkdtempSync(join(tmpdir(), "fleetlet-revoke-"));
  devRoot = join(work, "dev");
  mkdirSync(devRoot);
});

afterAll(async () => {
  await cleanupRoot(root);
  rmSync(work, { recursive: true, force: true });
});

describe("a device unplugged from a running container (cgroup v1 devices controller)", () => {
  it("takes away only its own access: another device of the same numbers and the default /dev/null keep theirs", async () => {
    if (detectCgroupLayout().mode === "v2")
      throw new Error("this host has no v1 devices controller: v1 revocation cannot be tested here");
    mknod("tun", 10, 200);
    symlinkSync("tun", join(devRoot, "tun-alias"));
    mknod("null-again", 1, 3);
    const runtime = new Runtime({ root, devRoot });
    const devices = [
      { path: "/dev/tun", target: "/dev/tun", permissions: "rw" },
      { path: "/dev/tun-alias", target: "/dev/tun-ro", permissions: "r" },
      { path: "/dev/null-again", target: "/dev/null2", permissions: "r" },
    ];
    const c = runtime.create({ layers: [rootfs], command: ["sleep", "1000"], capAdd: ["MKNOD"], devices });
    const sh = async (script: string) => (await runtime.exec(c.id, ["/bin/sh", "-c", script])).output.trim();
    const opens = (node: string, how: string) =>
      sh(`if (exec 3${how} ${node}) 2> /tmp/e; then echo ok; else sed 's/.*: //' /tmp/e; fi`);
    try {
      await runtime.start(c.id);
      expect(await opens("/dev/tun", "<")).toBe("ok");
      // The alias and the second /dev/null go; the devices they shared numbers with stay.
      rmSync(join(devRoot, "tun-alias"));
      rmSync(join(devRoot, "null-again"));
      const presence = await runtime.followDevices(c.id);
      expect(presence.map((d) => d.present)).toEqual([true, false, false]);
      expect(await sh("test -e /dev/tun-ro || test -e /dev/null2 || echo both gone")).toBe("both gone");
      expect(await opens("/dev/tun", "<")).toBe("ok");
      expect(await opens("/dev/tun", ">")).toBe("ok");
      expect(await opens("/dev/null", "<")).toBe("ok");
      // And the device that went is revoked once nothing else needs its numbers.
      rmSync(join(devRoot, "tun"));
      expect((await runtime.followDevices(c.id)).map((d) => d.present)).toEqual([false, false, false]);
      expect(await sh("mknod /dev/tun-made c 10 200 && echo made")).toBe("made");
      expect(await opens("/dev/tun-made", "<")).toBe("Operation not permitted");
      expect(await opens("/dev/null", "<")).toBe("ok");
    } finally {
      await runtime.delete(c.id, { force: true });
    }
  });
});

describe("a restarted agent following a running container (cgroup v1 devices controller)", () => {
  it("puts the cgroup's rules in line with what the container's /dev holds, even when no device changed", async () => {
    if (detectCgroupLayout().mode === "v2")
      throw new Error("this host has no v1 devices controller: v1 revocation cannot be tested here");
    mknod("tun2", 10, 200);
    const before = new Runtime({ root, devRoot });
    const devices = [{ path: "/dev/tun2", target: "/dev/tun" }];
    const c = before.create({ layers: [rootfs], command: ["sleep", "1000"], capAdd: ["MKNOD"], devices });
    try {
      await before.start(c.id);
      // An agent that died between a device's allow and the record of its node leaves the rule behind.
      const list = join(before.cgroups.locate(c.id).dirs.get("devices")!, "devices.list");
      writeFileSync(join(list, "..", "devices.allow"), "c 10:229 rw");
      expect(readFileSync(list, "utf8")).toContain("c 10:229 rw");
      const after = new Runtime({ root, devRoot });
      expect((await after.followDevices(c.id)).map((d) => d.present)).toEqual([true]);
      expect(readFileSync(list, "utf8")).not.toContain("c 10:229");
      const sh = async (script: string) => (await after.exec(c.id, ["/bin/sh", "-c", script])).output.trim();
      expect(await sh("mknod /dev/stray c 10 229 && (exec 3< /dev/stray) 2>&1 | sed 's/.*: //'")).toBe(
        "Operation not permitted",
      );
      expect(await sh("(exec 3< /dev/tun) && echo ok")).toBe("ok");
    } finally {
      await before.delete(c.id, { force: true });
    }
  });
});
