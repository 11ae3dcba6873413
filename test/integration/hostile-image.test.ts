/**
 * An image is untrusted: its /etc/passwd may be a FIFO, a device node, or a
 * symlink meant to lead into the host. Looking a user up in it must fail
 * promptly, naming the file, and leave everything else as it was: the agent
 * never hangs on an open, never reads a device to the end of memory, never
 * reads a host file. Directly on layer directories, with `fleetlet run
 * --rootfs`, and with a pushed image through `fleetlet run` and `apply`.
 */
import { execFileSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { readImageFile } from "../../agent/runtime/image-file.js";
import { fleetctl, fleetlet, runCli } from "../support/fleetlet-cli.js";
import { type RegistryFixture, registriesConfig, startRegistry } from "../support/registry.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";

const busybox = inject("busyboxRootfs");
/** Long enough for a loaded machine, short enough that a hang fails the test instead of the run. */
const HANG_MS = 30_000;
const PASSWD = "root:x:0:0:root:/root:/bin/sh\nsomebody:x:1234:1234::/:/bin/sh\n";
let work: string;
let root: string;

const mknod = (path: string, ...how: string[]) => execFileSync("mknod", [path, ...how]);

/** A layer directory with the given files; `entries` maps a path to its content or to how to make it. */
function layer(name: string, entries: Record<string, string | ((path: string) => void)>): string {
  const dir = join(work, "layers", name);
  for (const [rel, what] of Object.entries(entries)) {
    const path = join(dir, rel);
    mkdirSync(join(path, ".."), { recursive: true });
    if (typeof what === "string") writeFileSync(path, what);
    else what(path);
  }
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** A copy of the busybox rootfs whose /etc/passwd is made by `plant`. */
function hostileRootfs(name: string, plant: (dir: string) => void): string {
  const dir = join(work, "rootfs", name);
  cpSync(busybox, dir, { recursive: true, verbatimSymlinks: true });
  rmSync(join(dir, "etc", "passwd"));
  plant(dir);
  return dir;
}

const HOSTILE: Record<string, (dir: string) => void> = {
  "a FIFO": (dir) => execFileSync("mkfifo", [join(dir, "etc", "passwd")]),
  "a character device like /dev/zero": (dir) => mknod(join(dir, "etc", "passwd"), "c", "1", "5"),
  "a symlink to the image's own /dev/zero": (dir) => {
    mkdirSync(join(dir, "dev"), { recursive: true });
    mknod(join(dir, "dev", "zero"), "c", "1", "5");
    symlinkSync("../dev/zero", join(dir, "etc", "passwd"));
  },
  "a symlink to a host file outside the image": (dir) =>
    symlinkSync("../../../../../../../../../etc/shadow", join(dir, "etc", "passwd")),
};

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), "fleetlet-hostile-"));
  root = freshRoot();
});

afterAll(async () => {
  await cleanupRoot(root);
  rmSync(work, { recursive: true, force: true });
});

describe("reading a file out of an image's layers", () => {
  it("sees what the container sees: the topmost copy, whiteouts, links followed inside the image", () => {
    const lower = layer("lower", { "etc/passwd": "lower\n", "etc/group": "lower group\n", "real/pw": "via link\n" });
    const whiteout = layer("whiteout", { "etc/group": (p) => mknod(p, "c", "0", "0") });
    const upper = layer("upper", { "etc/passwd": "upper\n", "etc/alias": (p) => symlinkSync("/real/pw", p) });
    const layers = [upper, whiteout, lower];
    expect(readImageFile(layers, "/etc/passwd")).toBe("upper\n");
    expect(readImageFile(layers, "/etc/group")).toBeUndefined();
    expect(readImageFile(layers, "/etc/alias")).toBe("via link\n");
    expect(readImageFile(layers, "/etc/../../../real/pw")).toBe("via link\n");
    expect(readImageFile(layers, "/etc/shadow")).toBeUndefined();
  });

  it("never follows a directory link of a lower layer that an upper directory hides", () => {
    // In the merged view the upper etc/ is a directory and the lower etc symlink is hidden under it.
    const lower = layer("hidden-link", { etc: (p) => symlinkSync("/etc", p) });
    const upper = layer("hiding-dir", { "etc/group": "g\n" });
    expect(readImageFile([upper, lower], "/etc/passwd")).toBeUndefined();
    expect(readImageFile([upper, lower], "/etc/hostname")).toBeUndefined();
  });

  it("resolves a directory link inside the image, never into the host", () => {
    const img = layer("etc-link", { "usr/etc/passwd": "in the image\n", etc: (p) => symlinkSync("/usr/etc", p) });
    expect(readImageFile([img], "/etc/passwd")).toBe("in the image\n");
    // On the host this would be /proc/1/comm; the image has no /proc/1.
    const outward = layer("etc-outward", { etc: (p) => symlinkSync("../../../../../../../proc/1", p) });
    expect(() => readImageFile([outward], "/etc/comm")).toThrow(
      /leads through the symlink \/etc → .*proc\/1 to a file/,
    );
    const loop = layer("etc-loop", { etc: (p) => symlinkSync("../../../../../../../etc", p) });
    expect(() => readImageFile([loop], "/etc/passwd")).toThrow(/more than 40 symlinks/);
  });

  it("refuses a file over the cap, a directory, and a loop of links, naming the file", () => {
    const big = layer("big", {
      "etc/passwd": "x".repeat(2048),
      "etc/group/x": "",
      "etc/a": (p) => symlinkSync("b", p),
    });
    symlinkSync("a", join(big, "etc", "b"));
    expect(() => readImageFile([big], "/etc/passwd", 1024)).toThrow(
      expect.objectContaining({
        code: "E_UNSAFE_IMAGE",
        message: expect.stringMatching(/\/etc\/passwd: it is 2048 bytes/),
      }),
    );
    expect(() => readImageFile([big], "/etc/group")).toThrow(/\/etc\/group: it is a directory/);
    expect(() => readImageFile([big], "/etc/a")).toThrow(/more than 40 symlinks/);
  });
});

describe("fleetlet run --rootfs --user, with a hostile /etc/passwd", () => {
  it.each(Object.keys(HOSTILE))("fails promptly with E_UNSAFE_IMAGE when it is %s", (kind) => {
    const dir = hostileRootfs(kind.replace(/\W+/g, "-"), HOSTILE[kind]!);
    const r = fleetlet(root, ["run", "--rm", "--rootfs", dir, "--user", "somebody", "--", "/bin/true"], {
      timeoutMs: HANG_MS,
    });
    expect(r.stderr).toMatch(/image file \/etc\/passwd: .*\[E_UNSAFE_IMAGE\]/);
    expect(r.status).toBe(125);
  });

  it("leaves the runtime working: a container with a plain /etc/passwd runs as its user", () => {
    const dir = hostileRootfs("plain", (d) => writeFileSync(join(d, "etc", "passwd"), PASSWD));
    const r = fleetlet(root, ["run", "--rm", "--rootfs", dir, "--user", "somebody", "--", "/bin/id", "-u"], {
      timeoutMs: HANG_MS,
    });
    expect([r.status, r.stdout.trim()], r.stderr).toEqual([0, "1234"]);
  });
});

describe("a pushed image whose /etc/passwd is a FIFO", () => {
  let reg: RegistryFixture;
  let config: string;
  let good: string;
  let evil: string;

  beforeAll(async () => {
    reg = await startRegistry({ auth: "htpasswd" });
    config = join(work, "config.json");
    writeFileSync(
      config,
      JSON.stringify({
        deviceId: "dev-hostile",
        registries: registriesConfig(reg),
      }),
    );
    good = `${reg.host}/hostile/good:1`;
    evil = `${reg.host}/hostile/fifo:1`;
    const fifo = hostileRootfs("pushed-fifo", HOSTILE["a FIFO"]!);
    for (const [dir, ref] of [
      [busybox, good],
      [fifo, evil],
    ] as const) {
      const push = fleetctl(["--config", config, "push", dir, ref]);
      expect(push.status, push.stderr).toBe(0);
    }
  });

  afterAll(async () => {
    await reg?.stop();
  });

  it("is refused by fleetlet run --user promptly", () => {
    const r = fleetlet(root, ["--config", config, "run", "--rm", "--user", "somebody", evil, "--", "/bin/true"], {
      timeoutMs: HANG_MS,
    });
    expect(r.stderr).toMatch(/image file \/etc\/passwd: it is a FIFO.*\[E_UNSAFE_IMAGE\]/);
    expect(r.status).toBe(125);
  });

  it("fails a deployment that names a user, which rolls back and leaves the running service alone", async () => {
    const doc = (generation: number, services: Record<string, unknown>) => {
      const file = join(work, `desired-${generation}.json`);
      const update = { healthyWithinMs: 4000 };
      writeFileSync(
        file,
        JSON.stringify({ apiVersion: "fleetlet/v1", deployment: `d${generation}`, generation, services, update }),
      );
      return file;
    };
    const web = { image: good, command: ["/bin/sleep", "1000"], stopTimeoutMs: 200 };
    const apply = (file: string) =>
      runCli("fleetlet", ["--root", root, "--config", config, "apply", file], { timeoutMs: 3 * HANG_MS });
    const first = await apply(doc(1, { web }));
    expect(first.status, first.stderr).toBe(0);
    const webContainer = () =>
      JSON.parse(readFileSync(join(root, "db.json"), "utf8")).services.web.containerId as string;
    const before = webContainer();
    const second = await apply(doc(2, { web, evil: { image: evil, user: "somebody", command: ["/bin/true"] } }));
    expect(second.stderr).toMatch(/image file \/etc\/passwd: it is a FIFO.*\[E_UNSAFE_IMAGE\]/);
    expect(second.stdout).toMatch(/generation 2: rolledBack/);
    expect(second.status).not.toBe(0);
    expect(webContainer()).toBe(before);
    const ps = JSON.parse(fleetlet(root, ["ps", "--json"]).stdout) as { id: string; status: string }[];
    expect(ps.find((c) => c.id === before)?.status).toBe("running");
  });
});
