/**
 * Device paths resolved inside the device root: symlinks followed only
 * there, the major and minor split as glibc does, and the config's devRoot
 * with its environment override.
 */
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
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
