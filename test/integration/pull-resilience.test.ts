/**
 * Pulls that meet trouble: corrupted blobs, foreign platforms, token auth,
 * interrupted downloads, hostile layers; and layers shared and whited out.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { buildTar } from "../../agent/store/tar-writer.js";
import { type CountingProxy, startCountingProxy } from "../support/counting-proxy.js";
import { FLEETLET_BIN, fleetctl, fleetlet, runCli } from "../support/fleetlet-cli.js";
import { type IndexPlatform, putIndex as putIndexOver } from "../support/oci-index.js";
import { type RegistryFixture, startRegistry } from "../support/registry.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";
import { waitFor } from "../support/wait-for.js";

const rootfs = inject("busyboxRootfs");
let reg: RegistryFixture;
let root: string;
let work: string;
let config: string;

const creds = (r: RegistryFixture) => ({ username: r.username, password: r.password, ca: r.caFile });
function writeConfig(name: string, registries: Record<string, unknown>): string {
  const path = join(work, name);
  writeFileSync(path, JSON.stringify({ registries }));
  return path;
}
const pull = (...args: string[]) => fleetlet(root, ["--config", config, "pull", ...args]);
const push = (...args: string[]) => fleetctl(["--config", config, "push", ...args]);

function layersLeft(): string[] {
  return existsSync(join(root, "layers")) ? readdirSync(join(root, "layers")) : [];
}

beforeAll(async () => {
  reg = await startRegistry({ auth: "htpasswd" });
  root = freshRoot();
  work = mkdtempSync(join(tmpdir(), "fleetlet-resilience-"));
  config = writeConfig("config.json", { [reg.host]: creds(reg) });
  expect(push(rootfs, `${reg.host}/base/busybox:1`).status).toBe(0);
});

afterAll(async () => {
  await cleanupRoot(root);
  await reg.stop();
});

describe("integrity", () => {
  it("refuses a corrupted blob with E_DIGEST_MISMATCH and stores nothing of it", async () => {
    const dir = join(work, "corrupt");
    mkdirSync(dir);
    writeFileSync(join(dir, "payload"), randomBytes(200_000));
    const pushed = push(dir, `${reg.host}/bad/blob:1`);
    expect(pushed.status, pushed.stderr).toBe(0);
    const layer = /layer built: (sha256:[a-f0-9]{64})/.exec(pushed.stderr)![1]!;
    const hex = layer.slice(7);
    const data = join(reg.storageDir, "docker/registry/v2/blobs/sha256", hex.slice(0, 2), hex, "data");
    const bytes = readFileSync(data);
    bytes[bytes.length >> 1] = bytes[bytes.length >> 1]! ^ 0xff;
    writeFileSync(data, bytes);
    const r = pull(`${reg.host}/bad/blob:1`);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain(`blob ${layer}: its content hashes to`);
    expect(r.stderr).toContain("[E_DIGEST_MISMATCH]");
    expect(existsSync(join(root, "blobs/sha256", hex))).toBe(false);
    expect(readdirSync(join(root, "ingest"))).toEqual([]);
    expect(fleetlet(root, ["--config", config, "images"]).stdout).not.toContain("bad/blob");
  });
});

describe("platforms", () => {
  const putIndex = (tag: string, platforms: IndexPlatform[]) =>
    putIndexOver(reg.host, creds(reg), { repo: "base/busybox", from: "1", tag }, platforms);

  it("says which platforms an index offers when none is this device's", async () => {
    await putIndex("arm-only", [
      { os: "linux", architecture: "arm64", variant: "v8" },
      { os: "linux", architecture: "arm", variant: "v7" },
    ]);
    const r = pull("--platform", "linux/amd64", `${reg.host}/base/busybox:arm-only`);
    expect(r.stderr).toContain("no image for linux/amd64 (the index offers linux/arm64/v8, linux/arm/v7)");
    expect(r.stderr).toContain("[E_NO_PLATFORM]");
  });

  it("picks this platform's entry from an index, with the arm v7 → v6 fallback", async () => {
    await putIndex("multi", [
      { os: "linux", architecture: "arm", variant: "v6" },
      { os: "linux", architecture: "amd64" },
    ]);
    expect(pull("--platform", "linux/amd64", `${reg.host}/base/busybox:multi`).status).toBe(0);
    expect(pull("--platform", "linux/arm/v7", `${reg.host}/base/busybox:multi`).status).toBe(0);
    expect(pull("--platform", "linux/arm/v5", `${reg.host}/base/busybox:multi`).stderr).toContain("[E_NO_PLATFORM]");
  });
});

describe("bearer tokens", () => {
  it("pushes and pulls through the token flow, reusing tokens per scope", async () => {
    const tokenReg = await startRegistry({ auth: "token" });
    try {
      const cfg = writeConfig("token.json", { [tokenReg.host]: creds(tokenReg) });
      const pushed = await runCli("fleetctl", [
        "--config",
        cfg,
        "push",
        "--cmd",
        "/bin/echo",
        "--cmd",
        "token-ok",
        rootfs,
        `${tokenReg.host}/tok/image:1`,
      ]);
      expect(pushed.status, pushed.stderr).toBe(0);
      const before = tokenReg.tokenRequests!();
      const r = await runCli("fleetlet", [
        "--root",
        root,
        "--config",
        cfg,
        "run",
        "--rm",
        `${tokenReg.host}/tok/image:1`,
      ]);
      expect(r.stdout).toBe("token-ok\n");
      // One pull: one token for the repository's pull scope, reused for every request.
      expect(tokenReg.tokenRequests!() - before).toBe(1);
      const anonymous = writeConfig("token-anon.json", { [tokenReg.host]: { ca: tokenReg.caFile } });
      const refused = await runCli("fleetlet", [
        "--root",
        root,
        "--config",
        anonymous,
        "pull",
        `${tokenReg.host}/tok/image:1`,
      ]);
      expect(refused.stderr).toContain("[E_REGISTRY_AUTH]");
    } finally {
      await tokenReg.stop();
    }
  });
});

describe("interrupted downloads", () => {
  let proxy: CountingProxy;
  beforeAll(async () => {
    proxy = await startCountingProxy({ host: "127.0.0.1", port: reg.port });
  });
  afterAll(async () => {
    await proxy.stop();
  });

  it("resumes a pull killed with -9 mid-layer without starting over", async () => {
    const dir = join(work, "big");
    mkdirSync(dir);
    writeFileSync(join(dir, "blob.bin"), randomBytes(6 * 1024 * 1024));
    expect(push(dir, `${reg.host}/big/data:1`).status).toBe(0);
    const viaProxy = writeConfig("proxy.json", { [proxy.host]: creds(reg) });
    const ref = `${proxy.host}/big/data:1`;
    proxy.reset();
    const child = spawn(
      process.execPath,
      [FLEETLET_BIN, "--root", root, "--config", viaProxy, "pull", "--max-rate", "1M", ref],
      { stdio: "ignore" },
    );
    const ingest = join(root, "ingest");
    try {
      // readdirSync throws until the pull has made ingest/; waitFor asks again.
      await waitFor("2 MiB of the layer in ingest/", () => {
        const files = readdirSync(ingest).filter((f) => f.endsWith(".partial"));
        return files.length > 0 && statSync(join(ingest, files[0]!)).size >= 2 * 1024 * 1024;
      });
    } finally {
      const exited = child.exitCode !== null || child.signalCode !== null;
      child.kill("SIGKILL");
      if (!exited) await new Promise((resolve) => child.once("exit", resolve));
    }
    const firstRun = proxy.bytesDown();
    proxy.reset();
    const r = await runCli("fleetlet", ["--root", root, "--config", viaProxy, "pull", ref]);
    expect(r.status, r.stderr).toBe(0);
    const secondRun = proxy.bytesDown();
    const layerSize = Number(/(\d+) bytes fetched/.exec(r.stderr)?.[1]);
    const image = 6 * 1024 * 1024;
    // The second run fetched only the rest, and both together stay near the
    // image size: what a kill wastes is at most the range in flight (256 KiB at 1 MiB/s).
    expect(secondRun).toBeLessThan(image - 1024 * 1024);
    expect(firstRun + secondRun).toBeLessThan(image + 512 * 1024);
    expect(layerSize).toBeGreaterThan(0);
    expect(fleetlet(root, ["--config", viaProxy, "images"]).stdout).toContain(ref);
    // The killed pull was unpacking the layer as it downloaded; the next pull cleared what it left.
    expect(layersLeft().filter((n) => n.startsWith("."))).toEqual([]);
  });

  it("lets two processes pulling the same image at once share one download, and both succeed", async () => {
    const dir = join(work, "shared");
    mkdirSync(dir);
    writeFileSync(join(dir, "blob.bin"), randomBytes(3 * 1024 * 1024));
    expect(push(dir, `${reg.host}/big/shared:1`).status).toBe(0);
    const viaProxy = writeConfig("proxy-shared.json", { [proxy.host]: creds(reg) });
    proxy.reset();
    const args = ["--root", root, "--config", viaProxy, "pull", "--max-rate", "4M", `${proxy.host}/big/shared:1`];
    const [a, b] = await Promise.all([runCli("fleetlet", args), runCli("fleetlet", args)]);
    expect(a.status, a.stderr).toBe(0);
    expect(b.status, b.stderr).toBe(0);
    // The layer crossed the wire once: the second process waited for the first's download.
    expect(proxy.bytesDown()).toBeLessThan(3 * 1024 * 1024 + 512 * 1024);
    expect(readdirSync(join(root, "ingest")).filter((f) => f.endsWith(".lock") || f.endsWith(".partial"))).toEqual([]);
  });

  it("rides out a dropped link mid-download", async () => {
    const dir = join(work, "big2");
    mkdirSync(dir);
    writeFileSync(join(dir, "blob.bin"), randomBytes(4 * 1024 * 1024));
    expect(push(dir, `${reg.host}/big/drop:1`).status).toBe(0);
    const viaProxy = writeConfig("proxy2.json", { [proxy.host]: creds(reg) });
    proxy.reset();
    const child = spawn(
      process.execPath,
      [FLEETLET_BIN, "--root", root, "--config", viaProxy, "pull", "--max-rate", "2M", `${proxy.host}/big/drop:1`],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let stderr = "";
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    // The link drops once a quarter of the layer has come through, whatever the machine's speed.
    const MiB = 1024 * 1024;
    const atDrop = await waitFor("1 MiB through the proxy", () => (proxy.bytesDown() >= MiB ? proxy.bytesDown() : 0), {
      timeoutMs: 30_000,
      intervalMs: 20,
    });
    proxy.dropConnections();
    const code = await new Promise((resolve) => child.on("close", resolve));
    expect(code, stderr).toBe(0);
    expect(atDrop).toBeLessThan(4 * MiB);
  });
});

describe("hostile layers", () => {
  const canary = mkdtempSync(join(tmpdir(), "fleetlet-canary-"));
  const cases: [string, Parameters<typeof buildTar>[0], string][] = [
    ["a ../ escape", [{ name: "../../escaped", type: "file", body: Buffer.from("x") }], "'..' would leave the layer"],
    [
      "a symlink, then a file through it",
      [
        { name: "link", type: "symlink", linkname: canary },
        { name: "link/pwned", type: "file", body: Buffer.from("x") },
      ],
      'its parent "link" is a symlink',
    ],
    [
      "an absolute hard link",
      [{ name: "passwd", type: "hardlink", linkname: "/etc/passwd" }],
      "absolute paths are not allowed",
    ],
    ["a whiteout escape", [{ name: "etc/.wh..", type: "file" }], "the whiteout names no file"],
    [
      "a block device",
      [{ name: "dev/sda", type: "block", devmajor: 8, devminor: 0, mode: 0o666 }],
      'entry "dev/sda": block device 8:0: device nodes are not allowed',
    ],
    [
      "a character device",
      [{ name: "dev/mem", type: "char", devmajor: 1, devminor: 1, mode: 0o666 }],
      'entry "dev/mem": character device 1:1',
    ],
  ];
  it.each(cases)("refuses %s, writing nothing outside the store", (_label, entries, why) => {
    const tar = join(work, `hostile-${randomBytes(4).toString("hex")}.tar`);
    writeFileSync(tar, buildTar(entries));
    const ref = `${reg.host}/hostile/layer:${randomBytes(3).toString("hex")}`;
    expect(push(tar, ref).status).toBe(0);
    const r = pull(ref);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain("[E_UNSAFE_LAYER]");
    expect(r.stderr).toContain(why);
    expect(readdirSync(canary)).toEqual([]);
    expect(layersLeft().filter((n) => n.startsWith("."))).toEqual([]);
  });

  it("pulls a layer that sets overlay xattrs without them, saying which it dropped", () => {
    const tar = join(work, "xattrs.tar");
    const redirect = new Map([["trusted.overlay.redirect", Buffer.from("/etc")]]);
    writeFileSync(tar, buildTar([{ name: "app/", type: "dir", xattrs: redirect }]));
    const ref = `${reg.host}/hostile/xattrs:1`;
    expect(push(tar, ref).status).toBe(0);
    const r = pull("--quiet", ref);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(
      /^fleetlet: warning: layer sha256:[0-9a-f]{64}: entry "app\/": xattr "trusted.overlay.redirect" dropped: only user\.\* \(except user\.overlay\.\*\) and security\.capability are applied$/m,
    );
  });
});

describe("layers", () => {
  it("observes whiteouts and opaque directories from inside a container", () => {
    const tar = join(work, "whiteouts.tar");
    writeFileSync(
      tar,
      buildTar([
        { name: "bin/", type: "dir", mode: 0o755 },
        { name: "bin/.wh.ls", type: "file" },
        { name: "etc/", type: "dir", mode: 0o755 },
        { name: "etc/.wh..wh..opq", type: "file" },
        { name: "etc/motd", type: "file", body: Buffer.from("only me\n") },
      ]),
    );
    expect(push("--base", `${reg.host}/base/busybox:1`, tar, `${reg.host}/layered/wh:1`).status).toBe(0);
    const r = fleetlet(root, [
      "--config",
      config,
      "run",
      "--rm",
      `${reg.host}/layered/wh:1`,
      "/bin/sh",
      "-c",
      "test -e /bin/ls && echo ls-present; ls /etc; test -e /bin/cat && echo cat-present",
    ]);
    expect(r.stdout).toBe("motd\ncat-present\n");
  });

  it("fetches and unpacks only the new layer of an image on a stored base", () => {
    const dir = join(work, "app");
    mkdirSync(dir);
    writeFileSync(join(dir, "app.txt"), "app v1\n");
    expect(push("--base", `${reg.host}/base/busybox:1`, dir, `${reg.host}/layered/app:1`).status).toBe(0);
    expect(pull(`${reg.host}/base/busybox:1`).status).toBe(0);
    const layersBefore = layersLeft().length;
    const r = pull(`${reg.host}/layered/app:1`);
    expect(r.stderr).toMatch(/1 of 2 layers to fetch/);
    const fetched = Number(/(\d+) bytes fetched/.exec(r.stderr)?.[1]);
    expect(fetched).toBeLessThan(10_000);
    expect(layersLeft().length).toBe(layersBefore + 1);
    expect(
      fleetlet(root, ["--config", config, "run", "--rm", `${reg.host}/layered/app:1`, "/bin/cat", "/app.txt"]).stdout,
    ).toBe("app v1\n");
  });
});
