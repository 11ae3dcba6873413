/**
 * The state root is root's alone: after `fleetlet pull` and `fleetlet run`
 * the root and every directory holding image or container content (layers,
 * blobs, a container's dir and upper dir, each volume) is 0700 and owned by
 * root, on a new root and on one an older fleetlet left 0755, which is
 * repaired with one warning. Containers still see the modes they always did:
 * a service running as another user can look inside its root and volume.
 */
import { spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { fleetctl, fleetlet } from "../support/fleetlet-cli.js";
import { type RegistryFixture, registriesConfig, startRegistry } from "../support/registry.js";
import { cleanupRoot } from "../support/state-root.js";

const rootfs = inject("busyboxRootfs");
let reg: RegistryFixture;
let work: string;
let config: string;
let image: string;
const roots: string[] = [];

beforeAll(async () => {
  reg = await startRegistry({ auth: "htpasswd" });
  // Traversable by anyone, as /var/lib is: only the root's own mode keeps users out.
  work = mkdtempSync(join(tmpdir(), "fleetlet-modes-"));
  chmodSync(work, 0o755);
  config = join(work, "config.json");
  writeFileSync(config, JSON.stringify({ registries: registriesConfig(reg) }));
  image = `${reg.host}/modes/busybox:1`;
  const pushed = fleetctl(["--config", config, "push", "--cmd", "/bin/sh", rootfs, image]);
  expect(pushed.status, pushed.stderr).toBe(0);
});

afterAll(async () => {
  for (const root of roots) await cleanupRoot(root);
  await reg.stop();
  rmSync(work, { recursive: true, force: true });
});

function newRoot(name: string): string {
  const root = join(work, name);
  roots.push(root);
  return root;
}

/** "mode uid:gid" of each path under the root. */
function modes(root: string, paths: string[]): Record<string, string> {
  return Object.fromEntries(
    paths.map((p) => {
      const st = statSync(join(root, p));
      return [p, `${(st.mode & 0o7777).toString(8).padStart(4, "0")} ${st.uid}:${st.gid}`];
    }),
  );
}
const privately = (paths: string[]) => Object.fromEntries(paths.map((p) => [p, "0700 0:0"]));

const STORE_DIRS = [".", "layers", "blobs", "blobs/sha256", "ingest"];
const CONTAINER_DIRS = [
  ".",
  "containers",
  "containers/keep",
  "containers/keep/upper",
  "containers/keep/work",
  "volumes",
  "volumes/data",
];

function asNobody(...cmd: string[]) {
  const r = spawnSync(
    "setpriv",
    ["--reuid=65534", "--regid=65534", "--clear-groups", "--", "/bin/sh", "-c", 'exec "$@"', "sh", ...cmd],
    { encoding: "utf8" },
  );
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

describe("a new state root", () => {
  it("is 0700 and root's, with its store directories, after fleetlet pull", () => {
    const root = newRoot("pulled");
    const r = fleetlet(root, ["--config", config, "pull", "--quiet", image]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).not.toContain("warning");
    expect(modes(root, STORE_DIRS)).toEqual(privately(STORE_DIRS));
    expect(asNobody("/bin/ls", join(root, "layers")).out).toMatch(/Permission denied/);
  });

  it("keeps a container's upper dir, work dir and volumes 0700 after fleetlet run, while the container sees 0755", () => {
    const root = newRoot("ran");
    const script = "stat -c '%a' / /data; id -u; ls /bin/sh; touch /data/mine 2>&1 || true";
    const r = fleetlet(root, [
      "--config",
      config,
      "run",
      "--name",
      "keep",
      "--user",
      "1000",
      "-v",
      "data:/data",
      image,
      "/bin/sh",
      "-c",
      script,
    ]);
    expect(r.stderr).not.toContain("warning"); // a new root: nothing to repair
    expect(r.stdout).toMatch(/^755\n755\n1000\n\/bin\/sh\n/); // a non-root service still looks inside its root and volume
    expect(modes(root, [...STORE_DIRS, ...CONTAINER_DIRS])).toEqual(privately([...STORE_DIRS, ...CONTAINER_DIRS]));
    expect(modes(root, ["containers/keep/upper/fs", "volumes/data/data"])).toEqual({
      "containers/keep/upper/fs": "0755 0:0",
      "volumes/data/data": "0755 0:0",
    });
  });
});

describe("a directory that is not a state root", () => {
  it("is refused rather than made private behind its owner's back", () => {
    const dir = join(work, "someone-elses"); // not in `roots`: no cleanup through a runtime, which would refuse it too
    mkdirSync(dir, 0o755);
    writeFileSync(join(dir, "notes.txt"), "mine\n");
    const r = fleetlet(dir, ["ps"]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(
      /state root .*someone-elses holds files that are not fleetlet's \(notes\.txt\) and none that are; .* \[E_INVALID_ARGUMENT\]/,
    );
    expect(statSync(dir).mode & 0o7777).toBe(0o755);
    expect(readdirSync(dir)).toEqual(["notes.txt"]);
  });
});

describe("a state root an older fleetlet left open", () => {
  let root: string;
  beforeAll(() => {
    root = newRoot("old");
    for (const d of ["layers", "blobs/sha256", "ingest", "containers/old1", "volumes/legacy"])
      mkdirSync(join(root, d), { recursive: true, mode: 0o755 });
    chmodSync(join(root, "containers"), 0o711);
    chmodSync(join(root, "containers/old1"), 0o711);
    writeFileSync(join(root, "volumes/legacy/file"), "kept across the upgrade\n");
    for (const d of [".", "layers", "blobs", "blobs/sha256", "ingest", "volumes", "volumes/legacy"])
      chmodSync(join(root, d), 0o755);
    expect(asNobody("/bin/ls", join(root, "volumes/legacy")).status).toBe(0); // open, as it was
  });

  it("is repaired by fleetlet pull, which says so once", () => {
    const r = fleetlet(root, ["--config", config, "pull", "--quiet", image]);
    expect(r.status, r.stderr).toBe(0);
    const warnings = r.stderr.split("\n").filter((l) => l.includes(`state root ${root}`));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(
      /^fleetlet: warning: state root .*: 8 directories were open to other users or owned by another: \. \(was 0755\), blobs \(was 0755\), blobs\/sha256 \(was 0755\), ingest \(was 0755\), layers \(was 0755\), containers \(was 0711\), and 2 more; made them 0700 and owned by uid 0$/,
    );
    expect(modes(root, [...STORE_DIRS, "containers", "containers/old1", "volumes"])).toEqual(
      privately([...STORE_DIRS, "containers", "containers/old1", "volumes"]),
    );
    expect(asNobody("/bin/cat", join(root, "volumes/legacy/file")).out).toMatch(/Permission denied/);
    expect(fleetlet(root, ["--config", config, "images"]).stderr).toBe(""); // repaired: nothing more to say
  });

  it("moves an old volume under its 0700 directory at the next run, keeping its content", () => {
    const r = fleetlet(root, [
      "--config",
      config,
      "run",
      "--name",
      "keep",
      "-v",
      "legacy:/data",
      image,
      "/bin/cat",
      "/data/file",
    ]);
    expect(r.stderr).toBe("");
    expect(r.stdout).toBe("kept across the upgrade\n");
    expect(readFileSync(join(root, "volumes/legacy/data/file"), "utf8")).toBe("kept across the upgrade\n");
    const dirs = ["containers/keep", "containers/keep/upper", "containers/keep/work", "volumes/legacy"];
    expect(modes(root, dirs)).toEqual(privately(dirs));
  });
});
