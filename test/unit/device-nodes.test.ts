/**
 * Device paths resolved inside the device root: symlinks followed only
 * there, the major and minor split as glibc does, and the config's devRoot
 * with its environment override.
 */
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { afterAll, describe, expect, it } from "vitest";
import { loadDeviceConfig } from "../../agent/config/device-config.js";
import { hostDevicePath, splitDev } from "../../agent/runtime/device-nodes.js";

const dir = mkdtempSync(join(tmpdir(), "fleetlet-devroot-"));
mkdirSync(join(dir, "serial", "by-id"), { recursive: true });
writeFileSync(join(dir, "ttyUSB0"), "");
symlinkSync("../../ttyUSB0", join(dir, "serial", "by-id", "relative"));
symlinkSync("/dev/ttyUSB0", join(dir, "serial", "by-id", "absolute"));
symlinkSync("/dev/serial/by-id/relative", join(dir, "chained"));
symlinkSync("../../../etc/passwd", join(dir, "serial", "by-id", "above"));
symlinkSync("/etc/passwd", join(dir, "outside"));
symlinkSync("loop", join(dir, "loop"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("hostDevicePath", () => {
  it.each([
    ["/dev/ttyUSB0", "ttyUSB0"],
    ["/dev/serial/by-id/relative", "ttyUSB0"],
    ["/dev/serial/by-id/absolute", "ttyUSB0"],
    ["/dev/chained", "ttyUSB0"],
    ["/dev/serial", "serial"],
  ])("resolves %s inside the device root to %s", (path, host) => {
    expect(hostDevicePath(dir, path)).toBe(join(dir, host));
  });

  it("says undefined for a device that is not there", () => {
    expect(hostDevicePath(dir, "/dev/ttyACM0")).toBeUndefined();
    expect(hostDevicePath(dir, "/dev/ttyUSB0/x")).toBeUndefined();
  });

  it.each([
    ["/dev/outside", "the symlink /dev/outside → /etc/passwd leads outside /dev"],
    ["/dev/serial/by-id/above", "a symlink on the way leads above /dev"],
    ["/dev/loop", "more than 40 symlinks on the way"],
  ])("refuses %s with E_DEVICE", (path, why) => {
    expect(() => hostDevicePath(dir, path)).toThrow(
      expect.objectContaining({ code: "E_DEVICE", message: `device ${path}: ${why}` }),
    );
  });
});

describe("hostDevicePath while udev removes and remakes a link", () => {
  it("says absent or resolves it, and never throws the lookup's own ENOENT or EINVAL", async () => {
    const race = mkdtempSync(join(tmpdir(), "fleetlet-devrace-"));
    writeFileSync(join(race, "ttyUSB0"), "");
    const stop = new Int32Array(new SharedArrayBuffer(4));
    // Another thread flips the name between a link, nothing and a plain file as fast as it can.
    const worker = new Worker(
      `const fs = require("node:fs");
       const { workerData: w, parentPort } = require("node:worker_threads");
       const flip = (f) => { try { f(); } catch (err) { if (err.code !== "ENOENT" && err.code !== "EEXIST") throw err; } };
       while (Atomics.load(w.stop, 0) === 0) {
         flip(() => fs.symlinkSync("ttyUSB0", w.link));
         flip(() => fs.unlinkSync(w.link));
         flip(() => fs.writeFileSync(w.link, ""));
         flip(() => fs.unlinkSync(w.link));
       }
       parentPort.postMessage("stopped");`,
      { eval: true, workerData: { link: join(race, "by-id"), stop } },
    );
    const stopped = new Promise((resolve, reject) => {
      worker.once("message", resolve);
      worker.once("error", reject);
    });
    const seen = new Set<string>();
    try {
      for (let i = 0; i < 200_000; i++) {
        const host = hostDevicePath(race, "/dev/by-id");
        seen.add(host === undefined ? "absent" : host.slice(race.length));
      }
    } finally {
      Atomics.store(stop, 0, 1);
      await stopped;
      rmSync(race, { recursive: true, force: true });
    }
    // Each lookup saw the link (the node), nothing, or the plain file in its place: never an error.
    expect([...seen].every((s) => ["absent", "/ttyUSB0", "/by-id"].includes(s))).toBe(true);
    expect(seen.has("/ttyUSB0")).toBe(true);
  }, 60_000);
});

describe("splitDev", () => {
  it.each([
    [0x0103n, 1, 3],
    [0x8800n, 136, 0],
    [(0x12345n & 0xffn) | ((0x12345n & ~0xffn) << 12n) | (0x101n << 8n), 0x101, 0x12345],
  ])("splits %s into %i:%i", (rdev, major, minor) => {
    expect(splitDev(rdev)).toEqual({ major, minor });
  });
});

describe("the config's devRoot", () => {
  it("is /dev by default, and FLEETLET_DEV_ROOT overrides it", () => {
    const none = join(dir, "empty.json");
    writeFileSync(none, "{}");
    expect(loadDeviceConfig(none, {}).devRoot).toBe("/dev");
    expect(loadDeviceConfig(none, { FLEETLET_DEV_ROOT: "/tmp/devs" }).devRoot).toBe("/tmp/devs");
    expect(() => loadDeviceConfig(none, { FLEETLET_DEV_ROOT: "devs" })).toThrow("devRoot: expected an absolute path");
  });
});
