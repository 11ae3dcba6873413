/**
 * The pieces of the agent's self-update that need no broker: unpacking a
 * bundle beside the running version (only files and directories, checked
 * against its MANIFEST.sha256 and RELEASE), the pending-update state file,
 * and the launcher's crash-loop and deadline reverts (deploy/launcher.sh,
 * run by sh on a fake install whose "node" says which version ran).
 */
import { spawnSync } from "node:child_process";
import {
  createReadStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { unpackBundle } from "../../agent/store/bundle-unpack.js";
import { agentInstallOf, pointLink, readUpdateState, writeUpdateState } from "../../agent/system/agent-install.js";
import { fakeReleaseHome, manifestOf } from "../support/release-bundle.js";

const work = mkdtempSync(join(tmpdir(), "fleetlet-agent-bundle-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));
let n = 0;

/** A tiny bundle: fleetlet-V-linux-x64/{RELEASE,bin/tool,MANIFEST.sha256}, then `tamper` on the directory, then tar.gz. */
function bundle(version: string, tamper: (dir: string) => void = () => {}): string {
  const src = join(work, `src-${++n}`);
  const dir = join(src, `fleetlet-${version}-linux-x64`);
  mkdirSync(join(dir, "bin"), { recursive: true });
  writeFileSync(join(dir, "RELEASE"), `version=${version}\narch=x64\nnode=24\n`);
  writeFileSync(join(dir, "bin/tool"), "#!/bin/sh\necho tool\n", { mode: 0o755 });
  writeFileSync(join(dir, "MANIFEST.sha256"), manifestOf(dir));
  tamper(dir);
  const out = join(work, `b-${n}.tar.gz`);
  const r = spawnSync("tar", ["-C", src, "-czf", out, `fleetlet-${version}-linux-x64`]);
  if (r.status !== 0) throw new Error(String(r.stderr));
  return out;
}

const unpack = (tarball: string, versions: string, version = "0.2.0") =>
  unpackBundle(() => createReadStream(tarball), versions, { version, arch: "x64" }, "test bundle");

describe("unpackBundle", () => {
  it("unpacks a whole bundle into versions/<version>, modes kept", async () => {
    const versions = join(work, "v1");
    const dir = await unpack(bundle("0.2.0"), versions);
    expect(dir).toBe(join(versions, "0.2.0"));
    expect(spawnSync(join(dir, "bin/tool"), { encoding: "utf8" }).stdout).toBe("tool\n");
    expect(existsSync(`${dir}.new`)).toBe(false);
  });

  it.each([
    [
      "a file changed after the manifest was made",
      (d: string) => writeFileSync(join(d, "bin/tool"), "evil"),
      /bin\/tool hashes to/,
    ],
    [
      "a file the manifest does not list",
      (d: string) => writeFileSync(join(d, "extra"), "x"),
      /extra is not in MANIFEST/,
    ],
    ["a symbolic link", (d: string) => symlinkSync("/etc/passwd", join(d, "bin/link")), /is a symlink/],
    ["no manifest", (d: string) => rmSync(join(d, "MANIFEST.sha256")), /no MANIFEST\.sha256/],
  ])("refuses a bundle with %s, leaving nothing behind", async (_what, tamper, message) => {
    const versions = join(work, `refused-${n}`);
    await expect(unpack(bundle("0.2.0", tamper), versions)).rejects.toThrow(message);
    expect(existsSync(join(versions, "0.2.0"))).toBe(false);
    expect(existsSync(join(versions, "0.2.0.new"))).toBe(false);
  });

  it("refuses a bundle whose RELEASE names another version than the document", async () => {
    await expect(unpack(bundle("0.2.0"), join(work, "other"), "0.3.0")).rejects.toThrow(
      expect.objectContaining({
        code: "E_AGENT_UPDATE_FAILED",
        message: expect.stringMatching(/names version 0\.2\.0 for x64, not 0\.3\.0/),
      }),
    );
  });
});

describe("the install layout and the update state", () => {
  it("finds PREFIX and the version from the Node the agent runs on, and nothing outside a release layout", () => {
    expect(agentInstallOf("/opt/fleetlet/versions/0.3.0/node/bin/node")).toEqual({
      prefix: "/opt/fleetlet",
      version: "0.3.0",
    });
    expect(agentInstallOf("/usr/bin/node")).toBeUndefined();
  });

  it("writes the state as key=value lines the launcher reads, and reads it back", () => {
    const prefix = join(work, "state");
    mkdirSync(prefix);
    const s = {
      state: "pending",
      from: "0.1.0",
      to: "0.2.0",
      deployment: "d\nx",
      generation: 7,
      commitWithinSec: 5,
      attempts: 0,
    } as const;
    writeUpdateState(prefix, s);
    expect(readFileSync(join(prefix, "agent-update"), "utf8")).toContain(
      "state=pending\nfrom=0.1.0\nto=0.2.0\ndeployment=d x\n",
    );
    expect(readUpdateState(prefix)).toMatchObject({ ...s, deployment: "d x" });
    writeFileSync(join(prefix, "agent-update"), "state=pending\nfrom=../x\n");
    expect(() => readUpdateState(prefix)).toThrow(expect.objectContaining({ code: "E_CORRUPT_STATE" }));
  });
});

/** PREFIX with versions a and b, each a launcher and a "node" that prints its version and exits with `code` ("hang": sleeps). */
function fakeInstall(codes: { a: number; b: number | "hang" }): string {
  const prefix = join(work, `install-${++n}`);
  for (const v of ["a", "b"] as const) {
    const body = codes[v] === "hang" ? "exec sleep 1000" : `exit ${codes[v]}`;
    fakeReleaseHome(join(prefix, "versions", v), `echo ${v}\n${body}`);
  }
  pointLink(prefix, "current", "b");
  pointLink(prefix, "previous", "a");
  return prefix;
}

// A hang the watchdog failed to end would end here, by SIGTERM, and fail the test.
const launch = (prefix: string) =>
  spawnSync(join(prefix, "current/bin/fleetlet"), ["agent"], { encoding: "utf8", timeout: 60_000 });
const pending = { state: "pending", from: "a", to: "b", deployment: "d", generation: 3, commitWithinSec: 1 } as const;

describe("the launcher (deploy/launcher.sh)", () => {
  it("counts the starts of a version on trial and, after 3 uncommitted ones, runs the one it replaced", () => {
    const prefix = fakeInstall({ a: 0, b: 3 });
    writeUpdateState(prefix, { ...pending, attempts: 0 });
    for (let i = 1; i <= 3; i++) {
      expect(launch(prefix)).toMatchObject({ status: 3, stdout: "b\n" });
      expect(readUpdateState(prefix)).toMatchObject({ state: "pending", attempts: i });
    }
    expect(launch(prefix)).toMatchObject({ status: 0, stdout: "a\n" });
    expect(readlinkSync(join(prefix, "current"))).toBe("versions/a");
    expect(readUpdateState(prefix)).toMatchObject({ state: "failed", reason: expect.stringMatching(/crash loop/) });
  });

  it("kills a start that hangs past its deadline, and the next start reverts it", () => {
    const prefix = fakeInstall({ a: 0, b: "hang" });
    writeUpdateState(prefix, { ...pending, attempts: 0, grace: 0 });
    const hung = launch(prefix);
    expect(hung).toMatchObject({ signal: "SIGKILL", stdout: "b\n" });
    expect(launch(prefix).stdout).toBe("a\n");
    expect(readUpdateState(prefix)).toMatchObject({ state: "failed", reason: expect.stringMatching(/hung/) });
  });

  it("reverts a start that comes after the last one's deadline (a hang), and leaves a committed version alone", () => {
    const prefix = fakeInstall({ a: 0, b: 0 });
    writeUpdateState(prefix, { ...pending, attempts: 1, deadline: Math.floor(Date.now() / 1000) - 5 });
    expect(launch(prefix).stdout).toBe("a\n");
    expect(readUpdateState(prefix)?.reason).toMatch(/did not commit within agentUpdate\.commitWithinMs/);
    const committed = fakeInstall({ a: 0, b: 0 });
    expect(launch(committed).stdout).toBe("b\n");
    expect(existsSync(join(committed, "agent-update"))).toBe(false);
  });
});
