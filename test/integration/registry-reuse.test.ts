/**
 * What pulls share through one RegistryClients: the registry's connections
 * and tokens across pulls, and a tag's resolution under one lease (a
 * deployment's).
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pullImage, storePullDeps } from "../../agent/registry/pull.js";
import { pushImage } from "../../agent/registry/push.js";
import { RegistryClients } from "../../agent/registry/registry-clients.js";
import { LocalStore } from "../../agent/store/local-store.js";
import { loadNative } from "../../agent/system/native.js";
import { type CountingProxy, startCountingProxy } from "../support/counting-proxy.js";
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
  reg = await startRegistry({ auth: "token" });
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
      await next.release();
    } finally {
      clients.close();
    }
  });
});
