/**
 * What pulls share through one RegistryClients: the registry's connections
 * and tokens across pulls, and a tag's resolution under one lease (a
 * deployment's). And what a pull does not ask the registry for: the
 * documents a tag leads to by digest, when the store has them.
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { hostPlatform } from "../../agent/registry/platform.js";
import { pullImage, storePullDeps } from "../../agent/registry/pull.js";
import { pushImage } from "../../agent/registry/push.js";
import { RegistryClients } from "../../agent/registry/registry-clients.js";
import { LocalStore } from "../../agent/store/local-store.js";
import { loadNative } from "../../agent/system/native.js";
import { type CountingProxy, startCountingProxy } from "../support/counting-proxy.js";
import { putIndex } from "../support/oci-index.js";
import { type RegistryFixture, startRegistry } from "../support/registry.js";

const native = loadNative().core;
let reg: RegistryFixture;
let proxy: CountingProxy;
let work: string;
let registries: Record<string, { username: string; password: string; ca: string }>;

/** Pushes an image of one small random file to `<proxy>/reuse/<name>` and returns its reference there. */
async function pushSmall(name: string): Promise<string> {
  const dir = mkdtempSync(join(work, "img-"));
  writeFileSync(join(dir, "data.bin"), randomBytes(64 * 1024));
  const ref = `${proxy.host}/reuse/${name}`;
  await pushImage(dir, ref, { registries });
  return ref;
}

async function depsAt(name: string) {
  const root = join(work, name);
  mkdirSync(root, 0o700);
  return storePullDeps(await LocalStore.open(root, native), registries);
}

beforeAll(async () => {
  reg = await startRegistry({ auth: "token", accessLog: true });
  proxy = await startCountingProxy({ host: "127.0.0.1", port: reg.port });
  work = mkdtempSync(join(tmpdir(), "fleetlet-reuse-"));
  const creds = { username: reg.username, password: reg.password, ca: reg.caFile };
  registries = { [reg.host]: creds, [proxy.host]: creds };
});

afterAll(async () => {
  await proxy.stop();
  await reg.stop();
  rmSync(work, { recursive: true, force: true });
});

describe("one client per registry", () => {
  it("serves two pulls from the registry over the first one's two connections (requests, blob bodies) and one token", async () => {
    const a = await pushSmall("app:a");
    const b = await pushSmall("app:b");
    const clients = new RegistryClients();
    try {
      const deps = { ...(await depsAt("shared")), clients };
      const connections = proxy.connections();
      const tokens = reg.tokenRequests!();
      await pullImage(a, deps);
      expect(proxy.connections() - connections).toBe(2);
      await pullImage(b, deps);
      expect(proxy.connections() - connections).toBe(2);
      expect(reg.tokenRequests!() - tokens).toBe(1);
    } finally {
      clients.close();
    }
  });

  it("makes a client of its own for each pull given none, and so connections and a token each", async () => {
    const a = await pushSmall("solo:a");
    const b = await pushSmall("solo:b");
    const deps = await depsAt("solo");
    const connections = proxy.connections();
    const tokens = reg.tokenRequests!();
    await pullImage(a, deps);
    await pullImage(b, deps);
    expect(proxy.connections() - connections).toBe(4);
    expect(reg.tokenRequests!() - tokens).toBe(2);
  });
});

describe("tags resolved under a lease", () => {
  it("resolves a tag once per deployment's lease, so a tag moved meanwhile is seen by the next deployment", async () => {
    const ref = await pushSmall("moving:1");
    const clients = new RegistryClients();
    try {
      const deps = { ...(await depsAt("moving")), clients };
      const deployment = await deps.leases.take("apply one");
      const first = await pullImage(ref, deps, { lease: deployment });
      const moved = await pushSmall("moving:1");
      expect(moved).toBe(ref);
      const again = await pullImage(ref, deps, { lease: deployment });
      expect(again.digest).toBe(first.digest);
      await deployment.release();

      const next = await deps.leases.take("apply two");
      const fresh = await pullImage(ref, deps, { lease: next });
      expect(fresh.digest).not.toBe(first.digest);
      expect(fresh.pulledAt).not.toBe(first.pulledAt);
      await next.release();
    } finally {
      clients.close();
    }
  });
});

describe("documents named by digest", () => {
  it("asks only for the tag of a stored image, and again for a stored copy that no longer hashes right", async () => {
    const pushed = await pushSmall("stored:1");
    const repo = pushed.slice(pushed.indexOf("/") + 1, pushed.lastIndexOf(":"));
    const manifest = await putIndex(reg.host, registries[reg.host]!, { repo, from: "1", tag: "idx" }, [hostPlatform()]);
    const ref = pushed.replace(/:1$/, ":idx");
    const clients = new RegistryClients();
    try {
      const deps = { ...(await depsAt("stored")), clients };
      /** Pulls `ref` as a new deployment does (a lease of its own); resolves with the image and the requests it made. */
      const deploy = async (what: string) => {
        const before = (await reg.requests!()).length;
        const lease = await deps.leases.take(what);
        const image = await pullImage(ref, deps, { lease }).finally(() => lease.release());
        return { image, requests: (await reg.requests!()).slice(before) };
      };
      const tag = "GET /v2/reuse/stored/manifests/idx";
      const first = await deploy("apply one");
      expect(first.image.digest).toBe(manifest);
      const config = first.image.configDigest;
      expect(first.requests).toEqual(
        expect.arrayContaining([
          tag,
          `GET /v2/reuse/stored/manifests/${manifest}`,
          `GET /v2/reuse/stored/blobs/${config}`,
        ]),
      );

      // The next deployment resolves the tag again: one request, the rest is the store's.
      const second = await deploy("apply two");
      expect(second.image.digest).toBe(manifest);
      expect(second.requests).toEqual([tag]);
      // Nothing changed: the record stays as it was, from when the tag came to name this image.
      expect(second.image.pulledAt).toBe(first.image.pulledAt);

      // A stored config damaged on disk is not used: the registry gives it again, and the store keeps the good copy.
      writeFileSync(deps.store.blobPath(config), "{}");
      const third = await deploy("apply three");
      expect(third.image.digest).toBe(manifest);
      expect(third.requests).toEqual([tag, `GET /v2/reuse/stored/blobs/${config}`]);
      expect(deps.store.readSmall(config, 1 << 20)).toBeDefined();
      expect((await deploy("apply four")).requests).toEqual([tag]);
    } finally {
      clients.close();
    }
  });
});
