/**
 * Images end to end against a real registry (Debian's docker-registry, TLS
 * and htpasswd): fleetctl push, fleetlet pull / images / run / rmi / prune.
 */
import { cpSync, existsSync, mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { fleetctl, fleetlet } from "../support/fleetlet-cli.js";
import { type RegistryFixture, startRegistry } from "../support/registry.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";
import { pushWithSkopeo } from "../support/third-party-image.js";

const rootfs = inject("busyboxRootfs");
let reg: RegistryFixture;
let root: string;
let config: string;
let work: string;

function writeConfig(path: string, registries: Record<string, unknown>): string {
  writeFileSync(path, JSON.stringify({ deviceId: "dev-test", registries }));
  return path;
}

beforeAll(async () => {
  reg = await startRegistry({ auth: "htpasswd" });
  root = freshRoot();
  work = mkdtempSync(join(tmpdir(), "fleetlet-images-"));
  config = writeConfig(join(work, "config.json"), {
    [reg.host]: { username: reg.username, password: reg.password, ca: reg.caFile },
  });
  const pushed = fleetctl([
    "--config",
    config,
    "push",
    "--cmd",
    "/bin/sh",
    "--cmd",
    "-c",
    "--cmd",
    "echo default-cmd $GREETING",
    "--env",
    "GREETING=hello",
    rootfs,
    `${reg.host}/test/busybox:1`,
  ]);
  expect(pushed.status, pushed.stderr).toBe(0);
});

afterAll(async () => {
  await cleanupRoot(root);
  await reg.stop();
});

const run = (...args: string[]) => fleetlet(root, ["--config", config, ...args]);

describe("pull and run", () => {
  it("pulls an image pushed by fleetctl push, lists it and runs its default command", () => {
    const pulled = run("pull", `${reg.host}/test/busybox:1`);
    expect(pulled.status, pulled.stderr).toBe(0);
    expect(pulled.stdout).toMatch(new RegExp(`^${reg.host}/test/busybox:1@sha256:[a-f0-9]{64}\\n$`));
    expect(run("images").stdout).toContain(`${reg.host}/test/busybox:1`);
    const r = run("run", "--rm", `${reg.host}/test/busybox:1`);
    expect(r.stdout).toBe("default-cmd hello\n");
    expect(r.status).toBe(0);
  });

  it("merges the command line with the image as Docker does: args replace Cmd, -e overrides Env", () => {
    const r = run(
      "run",
      "--rm",
      "-e",
      "GREETING=bye",
      `${reg.host}/test/busybox:1`,
      "/bin/sh",
      "-c",
      "echo $GREETING; pwd",
    );
    expect(r.stdout).toBe("bye\n/\n");
  });

  it("pulls and runs an image pushed by skopeo from a umoci-built OCI layout", async () => {
    await pushWithSkopeo(reg, rootfs, "third/party:2", { cmd: ["/bin/echo", "from-umoci"] });
    const r = run("run", "--rm", `${reg.host}/third/party:2`);
    expect(r.stderr).toContain("pulling"); // not in the store yet: run pulled it first
    expect(r.stdout).toBe("from-umoci\n");
  });

  it("pulls, verifies and runs zstd layers written by fleetctl push --compress zstd", () => {
    const ref = `${reg.host}/test/zstd:1`;
    const pushed = fleetctl([
      "--config",
      config,
      "push",
      "--compress",
      "zstd",
      "--cmd",
      "/bin/echo",
      "--cmd",
      "zstd-ok",
      rootfs,
      ref,
    ]);
    expect(pushed.status, pushed.stderr).toBe(0);
    const pulled = run("pull", ref);
    expect(pulled.status, pulled.stderr).toBe(0);
    const image = JSON.parse(run("images", "--json").stdout).find((i: { ref: string }) => i.ref === ref);
    expect(image.layers.map((l: { mediaType: string }) => l.mediaType)).toEqual([
      "application/vnd.oci.image.layer.v1.tar+zstd",
    ]);
    expect(run("run", "--rm", ref).stdout).toBe("zstd-ok\n");
  });

  it("pulls and runs an image whose zstd layers skopeo wrote", async () => {
    // A layer the registry does not hold yet: skopeo would reuse a gzip blob it already has rather than recompress.
    const own = join(work, "zstd-rootfs");
    cpSync(rootfs, own, { recursive: true, verbatimSymlinks: true });
    writeFileSync(join(own, "zstd-marker"), "made for the zstd test\n");
    await pushWithSkopeo(reg, own, "third/zstd:1", { cmd: ["/bin/echo", "zstd-from-skopeo"], compress: "zstd" });
    const r = run("run", "--rm", `${reg.host}/third/zstd:1`);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toBe("zstd-from-skopeo\n");
    const image = JSON.parse(run("images", "--json").stdout).find((i: { ref: string }) =>
      i.ref.endsWith("third/zstd:1"),
    );
    expect(image.layers.at(-1).mediaType).toBe("application/vnd.oci.image.layer.v1.tar+zstd");
  });

  it("refuses a --compress it does not know, naming the option", () => {
    const r = fleetctl(["--config", config, "push", "--compress", "lzma", rootfs, `${reg.host}/test/lzma:1`]);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('--compress: expected gzip or zstd, got "lzma"');
  });

  it("transfers nothing but the manifest when the image is already stored", () => {
    const r = run("pull", `${reg.host}/test/busybox:1`);
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/0 of 1 layers to fetch/);
    expect(r.stderr).toMatch(/pulled .*: 0 bytes fetched/);
  });
});

describe("errors", () => {
  it("names the registry and the cause when the password is wrong", () => {
    const bad = writeConfig(join(work, "bad-pass.json"), {
      [reg.host]: { username: reg.username, password: "wrong", ca: reg.caFile },
    });
    const r = fleetlet(root, ["--config", bad, "pull", `${reg.host}/test/busybox:1`]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain(`${reg.host}: authentication failed`);
    expect(r.stderr).toContain("[E_REGISTRY_AUTH]");
  });

  it("gives a clear TLS error when the registry's CA is unknown", () => {
    const noCa = writeConfig(join(work, "no-ca.json"), {
      [reg.host]: { username: reg.username, password: reg.password },
    });
    const r = fleetlet(root, ["--config", noCa, "pull", `${reg.host}/test/busybox:1`]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain("certificate is not trusted");
    expect(r.stderr).toContain("[E_REGISTRY_TLS]");
  });

  it("says when a tag does not exist", () => {
    const r = run("pull", `${reg.host}/test/busybox:nope`);
    expect(r.stderr).toContain(`${reg.host}/test/busybox:nope: no such image`);
    expect(r.stderr).toContain("[E_MANIFEST_UNKNOWN]");
  });

  it("says when the registry is down", () => {
    const down = writeConfig(join(work, "down.json"), { "127.0.0.1:9": {} });
    const r = fleetlet(root, ["--config", down, "pull", "127.0.0.1:9/x/y:1"]);
    expect(r.stderr).toMatch(/127\.0\.0\.1:9: .*ECONNREFUSED/);
    expect(r.stderr).toContain("[E_REGISTRY_UNREACHABLE]");
  });

  it("refuses a malformed reference before contacting anything", () => {
    const r = run("pull", "busybox");
    expect(r.status).toBe(125);
    expect(r.stderr).toContain('image "busybox": name the registry');
  });
});

describe("housekeeping", () => {
  it("refuses to remove an image a container uses, and prune keeps what is in use", () => {
    const ref = `${reg.host}/test/busybox:1`;
    expect(run("run", "-d", "--name", "user1", ref, "sleep", "60").status).toBe(0);
    const rmi = run("rmi", ref);
    expect(rmi.status).not.toBe(0);
    expect(rmi.stderr).toContain("is used by container user1");
    const layers = readdirSync(join(root, "layers")).filter((n) => !n.startsWith("."));
    expect(run("prune").status).toBe(0);
    expect(readdirSync(join(root, "layers")).filter((n) => !n.startsWith("."))).toEqual(layers);
    expect(run("rm", "-f", "user1").status).toBe(0);
  });

  it("removes an image and the layers only it used", () => {
    const ref = `${reg.host}/third/party:2`;
    const before = readdirSync(join(root, "blobs", "sha256")).length;
    const r = run("rmi", ref);
    expect(r.status, r.stderr).toBe(0);
    expect(run("images").stdout).not.toContain(ref);
    expect(readdirSync(join(root, "blobs", "sha256")).length).toBeLessThan(before);
    expect(existsSync(join(root, "db.json"))).toBe(true);
  });
});
