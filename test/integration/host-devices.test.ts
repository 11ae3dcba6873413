/**
 * Host devices given to a container (`--device`, a service's `devices`):
 * real nodes the test makes in a directory standing in for /dev (the
 * config's `devRoot`). A loop block device over a temp file is the device a
 * container reads and writes; the tun device (10:200) is given read-only
 * through a by-id style symlink, under another name; the kernel log (1:11)
 * is not given, and stays refused even when the container makes its node.
 * The same probe runs under the v1 devices controller (this host is hybrid)
 * and under a cgroup v2 device program on the host's cgroup2 mount, where a
 * running container also follows a device unplugged and plugged back under
 * other numbers (the program replaced, not stacked).
 */
import { spawnSync } from "node:child_process";
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readSync,
  rmdirSync,
  rmSync,
  statfsSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { Cgroups } from "../../agent/runtime/cgroup.js";
import { CGROUP2_SUPER_MAGIC, detectCgroupLayout } from "../../agent/runtime/cgroup-layout.js";
import { Runtime } from "../../agent/runtime/runtime.js";
import { fleetlet } from "../support/fleetlet-cli.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";

const rootfs = inject("busyboxRootfs");
/** `fleetlet run --rm --rootfs` of the busybox rootfs, with the test's config and what follows. */
const runOnce = (args: string[]) => fleetlet(root, ["--config", config, "run", "--rm", "--rootfs", rootfs, ...args]);
const layout = detectCgroupLayout();
const v2Parent = `fleetlet-test-hostdev-${process.pid}`;
let root: string;
let work: string;
let devRoot: string;
let config: string;
let loop: { device: string; major: number; minor: number };

/** mknod(1) for the test's own dev directory. */
function mknod(path: string, type: "c" | "b", major: number, minor: number, mode = "660", group = "0"): void {
  mkdirSync(join(path, ".."), { recursive: true });
  rmSync(path, { force: true });
  const r = spawnSync("sh", [
    "-c",
    `mknod -m ${mode} "$1" ${type} ${major} ${minor} && chgrp ${group} "$1"`,
    "-",
    path,
  ]);
  if (r.status !== 0) throw new Error(`mknod ${path}: ${r.stderr}`);
}

/** A loop device over a 64 KiB file that starts with "from-host". */
function attachLoop(): typeof loop {
  const backing = join(work, "disk.img");
  writeFileSync(backing, Buffer.concat([Buffer.from("from-host"), Buffer.alloc(65536 - 9)]));
  const r = spawnSync("losetup", ["-f", "--show", backing], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`no loop device for the read/write test (losetup -f: ${r.stderr.trim()})`);
  const device = r.stdout.trim();
  const [major, minor] = spawnSync("stat", ["-c", "%t %T", device], { encoding: "utf8" })
    .stdout.trim()
    .split(" ")
    .map((h) => Number.parseInt(h, 16));
  return { device, major: major!, minor: minor! };
}

function readHost(device: string, bytes: number): string {
  const fd = openSync(device, "r");
  try {
    const buf = Buffer.alloc(bytes);
    readSync(fd, buf, 0, bytes, 0);
    return buf.toString();
  } finally {
    closeSync(fd);
  }
}

/** Reads and writes the disk, looks at the serial node, opens what it may and what it may not. */
const PROBE = `
head -c 9 /dev/disk0; echo
printf from-cont > /dev/disk0 && echo "write disk0: ok"
stat -c 'ttyS0: %F %t:%T %a uid %u gid %g' /dev/ttyS0
if (exec 3< /dev/ttyS0) 2> /tmp/err; then echo "read ttyS0: ok"; else echo "read ttyS0: $(sed 's/.*: //' /tmp/err)"; fi
if (exec 3> /dev/ttyS0) 2> /tmp/err; then echo "write ttyS0: ok"; else echo "write ttyS0: $(sed 's/.*: //' /tmp/err)"; fi
test -e /dev/kmsg || echo "kmsg: not given"
mknod /dev/kmsg c 1 11 && echo "mknod kmsg: ok"
if (exec 3< /dev/kmsg) 2> /tmp/err; then echo "read kmsg: ok"; else echo "read kmsg: $(sed 's/.*: //' /tmp/err)"; fi
echo "groups: $(id -G)"
`;

const EXPECTED = [
  "from-host",
  "write disk0: ok",
  "ttyS0: character special file a:c8 640 uid 0 gid 20",
  "read ttyS0: ok",
  "write ttyS0: Operation not permitted",
  "kmsg: not given",
  "mknod kmsg: ok",
  "read kmsg: Operation not permitted",
  "groups: 0 997 1000",
];

const DEVICES = ["/dev/disk0", "/dev/serial/by-id/usb-FTDI_A50285BI-if00-port0:/dev/ttyS0:r"];

beforeAll(() => {
  root = freshRoot();
  work = mkdtempSync(join(tmpdir(), "fleetlet-hostdev-"));
  devRoot = join(work, "dev");
  loop = attachLoop();
  mknod(join(devRoot, "disk0"), "b", loop.major, loop.minor);
  mknod(join(devRoot, "ttyUSB0"), "c", 10, 200, "640", "20");
  mkdirSync(join(devRoot, "serial", "by-id"), { recursive: true });
  symlinkSync("../../ttyUSB0", join(devRoot, "serial", "by-id", "usb-FTDI_A50285BI-if00-port0"));
  mknod(join(devRoot, "kmsg"), "c", 1, 11);
  symlinkSync("/etc/passwd", join(devRoot, "escape"));
  config = join(work, "config.json");
  writeFileSync(config, JSON.stringify({ devRoot }));
});

afterAll(async () => {
  await cleanupRoot(root);
  if (loop) spawnSync("losetup", ["-d", loop.device]);
  rmSync(work, { recursive: true, force: true });
  const parent = layout.unified ? join(layout.unified, v2Parent) : null;
  if (parent && existsSync(parent)) rmdirSync(parent);
});

function runProbe(extra: string[] = []) {
  const devices = DEVICES.flatMap((d) => ["--device", d]);
  const groups = ["--group-add", "app", "--group-add", "997"];
  return runOnce(["--cap-add", "MKNOD", ...devices, ...groups, ...extra, "--", "/bin/sh", "-c", PROBE]);
}

describe("host devices", () => {
  it(`are made in the container and opened only as allowed (cgroup ${layout.mode})`, () => {
    const r = runProbe();
    expect(r.stderr).toBe("");
    expect(r.stdout.split("\n").filter(Boolean)).toEqual(EXPECTED);
    // The container's write reached the real device.
    expect(readHost(loop.device, 9)).toBe("from-cont");
  });

  it("are made and allowed the same through a cgroup v2 device program", async () => {
    const unified = layout.unified;
    if (!unified || statfsSync(unified).type !== CGROUP2_SUPER_MAGIC)
      throw new Error("no cgroup2 mount on this host: the v2 device program cannot be tested here");
    writeFileSync(loop.device, "from-host");
    const cgroups = new Cgroups({ mode: "v2", v1: new Map(), unified }, v2Parent);
    const runtime = new Runtime({ root, cgroups, devRoot });
    const c = runtime.create({
      layers: [rootfs],
      command: ["/bin/sh", "-c", PROBE],
      capAdd: ["MKNOD"],
      user: { uid: 0, gid: 0, groups: [1000, 997] },
      devices: [
        { path: "/dev/disk0" },
        { path: "/dev/serial/by-id/usb-FTDI_A50285BI-if00-port0", target: "/dev/ttyS0", permissions: "r" },
      ],
    });
    expect([...cgroups.locate(c.id).dirs.keys()]).toEqual(["unified"]);
    await runtime.start(c.id);
    await runtime.wait(c.id);
    const output = runtime.logs(c.id);
    await runtime.delete(c.id);
    expect(output.split("\n").filter(Boolean)).toEqual(EXPECTED);
    expect(readHost(loop.device, 9)).toBe("from-cont");
  });

  it("follow a device unplugged and plugged back under new numbers into a running container, on cgroup v2", async () => {
    const unified = layout.unified;
    if (!unified || statfsSync(unified).type !== CGROUP2_SUPER_MAGIC)
      throw new Error("no cgroup2 mount on this host: the v2 device program cannot be tested here");
    mknod(join(devRoot, "hot0"), "c", 10, 200);
    const cgroups = new Cgroups({ mode: "v2", v1: new Map(), unified }, v2Parent);
    const runtime = new Runtime({ root, cgroups, devRoot });
    const devices = [{ path: "/dev/hot0", target: "/dev/hot" }];
    const c = runtime.create({ layers: [rootfs], command: ["sleep", "1000"], capAdd: ["MKNOD"], devices });
    const sh = async (script: string) => (await runtime.exec(c.id, ["/bin/sh", "-c", script])).output.trim();
    const open = (node: string) => sh(`if (exec 3<> ${node}) 2> /tmp/e; then echo ok; else sed 's/.*: //' /tmp/e; fi`);
    try {
      const { pid } = await runtime.start(c.id);
      expect(await open("/dev/hot")).toBe("ok");
      rmSync(join(devRoot, "hot0"));
      expect(await runtime.followDevices(c.id)).toEqual([{ path: "/dev/hot0", target: "/dev/hot", present: false }]);
      expect(await sh("test -e /dev/hot && echo there || echo gone")).toBe("gone");
      mknod(join(devRoot, "hot0"), "c", 10, 229);
      expect(await runtime.followDevices(c.id)).toEqual([{ path: "/dev/hot0", target: "/dev/hot", present: true }]);
      expect(await sh("stat -c %t:%T /dev/hot")).toBe("a:e5");
      expect(await open("/dev/hot")).toBe("ok");
      // The program was replaced, not added to: the old numbers no longer open, even through a node made inside.
      expect(await sh("mknod /dev/old c 10 200 && echo made")).toBe("made");
      expect(await open("/dev/old")).toBe("Operation not permitted");
      expect(runtime.inspect(c.id)).toMatchObject({ status: "running", pid });
    } finally {
      await runtime.delete(c.id, { force: true });
    }
  });

  it("refuses to start without a device that is absent, naming it", () => {
    const r = runOnce(["--device", "/dev/ttyACM0", "--", "true"]);
    expect(r.status).toBe(125);
    expect(r.stderr).toContain(`E_DEVICE_ABSENT`);
    expect(r.stderr).toContain(`device /dev/ttyACM0 is absent (device root ${devRoot})`);
  });

  it("refuses a symlink that leads out of the device directory, and what is not a device", () => {
    const out = runOnce(["--device", "/dev/escape", "--", "true"]);
    expect(out.status).toBe(125);
    expect(out.stderr).toContain("device /dev/escape: the symlink /dev/escape → /etc/passwd leads outside /dev");
    const dir = runOnce(["--device", "/dev/serial", "--", "true"]);
    expect(dir.status).toBe(125);
    expect(dir.stderr).toContain(`device /dev/serial: ${join(devRoot, "serial")} is not a character or block device`);
  });

  it("refuses a --device or --group-add the command line gets wrong, naming the flag", () => {
    const bad = fleetlet(root, [
      "run",
      "--rm",
      "--rootfs",
      rootfs,
      "--device",
      "/dev/ttyUSB0:/dev/ttyS0:rx",
      "--",
      "true",
    ]);
    expect(bad.status).toBe(125);
    expect(bad.stderr).toContain('devices.0.permissions: expected a subset of "rwm"');
    const group = fleetlet(root, ["run", "--rm", "--rootfs", rootfs, "--group-add", "dialout", "--", "true"]);
    expect(group.status).toBe(125);
    expect(group.stderr).toContain(`--group-add[0]: no group "dialout" in the image's /etc/group`);
  });
});
