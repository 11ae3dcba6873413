/**
 * The default device rules, seen from inside: a root with CAP_MKNOD may make
 * a node for a host device (here the tun device, 10:200) but not open it,
 * while the standard nodes work. On this host (hybrid) the rules are the v1
 * devices controller's; the cgroup v2 BPF program is tested on the host's
 * cgroup2 mount by running a container with a v2 layout rooted there, and
 * on a plain process for its atomic replacement.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, rmdirSync, statfsSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { Cgroups } from "../../agent/runtime/cgroup.js";
import { CGROUP2_SUPER_MAGIC, detectCgroupLayout } from "../../agent/runtime/cgroup-layout.js";
import { Runtime } from "../../agent/runtime/runtime.js";
import { loadNative } from "../../agent/system/native.js";
import { fleetlet } from "../support/fleetlet-cli.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";

let root: string;
const rootfs = inject("busyboxRootfs");
const layout = detectCgroupLayout();
const v2Parent = `fleetlet-test-devices-${process.pid}`;

/** Opens each node for reading and writing (in a subshell: a failed `exec` ends a shell) and says how it went. */
const PROBE = `
mkdir -p /dev/net && mknod /dev/net/tun c 10 200 && echo "mknod tun: ok"
for n in net/tun null zero full random urandom tty ptmx; do
  if (exec 3<> /dev/$n) 2> /tmp/err; then echo "open $n: ok"; else echo "open $n: $(sed 's/.*: //' /tmp/err)"; fi
done
`;

/** The results every host must give, whichever cgroup version enforces them. */
const EXPECTED = [
  "mknod tun: ok",
  "open net/tun: Operation not permitted",
  "open null: ok",
  "open zero: ok",
  "open full: ok",
  "open random: ok",
  "open urandom: ok",
  // Allowed by the rules; the kernel then finds no controlling terminal.
  "open tty: No such device or address",
  "open ptmx: ok",
];

function cgroup2Mount(): string {
  const dir = layout.unified;
  if (!dir || statfsSync(dir).type !== CGROUP2_SUPER_MAGIC)
    throw new Error("no cgroup2 mount on this host: the v2 device program cannot be tested here");
  return dir;
}

beforeAll(() => {
  root = freshRoot();
});
afterAll(async () => {
  await cleanupRoot(root);
  const parent = layout.unified ? join(layout.unified, v2Parent) : null;
  if (parent && existsSync(parent)) rmdirSync(parent);
});

describe("the default device rules", () => {
  it(`let a container open only the standard nodes (cgroup ${layout.mode})`, () => {
    const r = fleetlet(root, ["run", "--rm", "--rootfs", rootfs, "--cap-add", "MKNOD", "--", "/bin/sh", "-c", PROBE]);
    expect(r.stdout.split("\n").filter(Boolean)).toEqual(EXPECTED);
  });

  it("let the same container open them through a cgroup v2 device program", async () => {
    const unified = cgroup2Mount();
    const cgroups = new Cgroups({ mode: "v2", v1: new Map(), unified }, v2Parent);
    const runtime = new Runtime({ root, cgroups });
    const c = runtime.create({ layers: [rootfs], command: ["/bin/sh", "-c", PROBE], capAdd: ["MKNOD"] });
    // Only the cgroup2 hierarchy: no v1 devices cgroup helps the program refuse.
    expect([...cgroups.locate(c.id).dirs.keys()]).toEqual(["unified"]);
    await runtime.start(c.id);
    await runtime.wait(c.id);
    const output = runtime.logs(c.id);
    await runtime.delete(c.id);
    expect(output.split("\n").filter(Boolean)).toEqual(EXPECTED);
  });
});

describe("the cgroup v2 device program", () => {
  /** Opens /dev/zero and /dev/full from a shell placed in `dir`. */
  function probe(dir: string): string {
    const script = `echo $$ > ${dir}/cgroup.procs || exit 9
      for n in zero full; do if (exec 3< /dev/$n); then echo "$n ok"; else echo "$n refused"; fi; done`;
    const r = spawnSync("/bin/sh", ["-c", script], { encoding: "utf8" });
    expect(r.status).toBe(0);
    return r.stdout;
  }

  it("is replaced, not stacked, when attached again to the same cgroup", () => {
    const dir = join(cgroup2Mount(), v2Parent, `replace-${process.pid}`);
    mkdirSync(dir, { recursive: true });
    const shim = loadNative().shimPath;
    try {
      const attach = (...rules: string[]) => spawnSync(shim, ["devices", dir, ...rules], { encoding: "utf8" });
      expect(attach("c 1:7 r").status).toBe(0);
      expect(probe(dir)).toBe("zero refused\nfull ok\n");
      // Stacked, both programs would have to allow: /dev/zero would stay refused.
      expect(attach("c 1:5 r").status).toBe(0);
      expect(probe(dir)).toBe("zero ok\nfull refused\n");
      const bad = attach("c 1:5 rx");
      expect(bad.status).toBe(125);
      expect(bad.stderr).toContain("device rule `c 1:5 rx`");
    } finally {
      rmdirSync(dir);
    }
  });
});
