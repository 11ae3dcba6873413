/**
 * DeviceWatch on a real directory (inotify through fs.watch): changes under
 * directories that appear later are seen, a directory removed and made
 * again is watched anew, and a burst of changes is one call.
 */
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { DeviceWatch } from "../../agent/runtime/device-watch.js";
import { waitFor } from "../support/wait-for.js";

const BY_ID = "/dev/serial/by-id/usb-x";
let dir: string;
let watch: DeviceWatch;

function setup(): { calls: () => number } {
  dir = mkdtempSync(join(tmpdir(), "fleetlet-devwatch-"));
  watch = new DeviceWatch(dir, 30);
  let n = 0;
  watch.subscribe([BY_ID], () => n++);
  return { calls: () => n };
}

afterEach(() => {
  watch.close();
  rmSync(dir, { recursive: true, force: true });
});

describe("DeviceWatch", () => {
  it("sees a link made in directories that did not exist when it began", async () => {
    const { calls } = setup();
    mkdirSync(join(dir, "serial"));
    await waitFor("the new directory", () => calls() >= 1);
    mkdirSync(join(dir, "serial", "by-id"));
    await waitFor("the next directory", () => calls() >= 2);
    const before = calls();
    symlinkSync("../../ttyUSB0", join(dir, "serial", "by-id", "usb-x"));
    await waitFor("the link", () => calls() > before);
  });

  it("watches a directory removed and made again within one debounce anew", async () => {
    const { calls } = setup();
    rmSync(join(dir, "serial"), { recursive: true, force: true });
    mkdirSync(join(dir, "serial", "by-id"), { recursive: true });
    await waitFor("the new directories", () => calls() >= 1);
    await new Promise((r) => setTimeout(r, 100)); // let every event of the burst land
    rmSync(join(dir, "serial"), { recursive: true });
    mkdirSync(join(dir, "serial", "by-id"), { recursive: true });
    await waitFor("the directories made again", () => calls() >= 2);
    await new Promise((r) => setTimeout(r, 100));
    const before = calls();
    writeFileSync(join(dir, "serial", "by-id", "usb-x"), "");
    await waitFor("a change in the directory made again", () => calls() > before, { timeoutMs: 10_000 });
  });

  it("calls once for a burst of changes", async () => {
    const { calls } = setup();
    for (let i = 0; i < 20; i++) writeFileSync(join(dir, `n${i}`), "");
    await waitFor("the burst", () => calls() >= 1);
    await new Promise((r) => setTimeout(r, 200));
    expect(calls()).toBe(1);
  });
});
