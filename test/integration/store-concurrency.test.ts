/**
 * The store with many writers at once, on the real kernel and registry:
 * `fleetlet prune` in a loop while ten pulls of images that share a base run
 * side by side with applies of deployments. Afterwards every record is
 * there, every blob is what its digest says, every snapshot is whole, and a
 * last collection finds nothing that no record names.
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import type { DbData } from "../../schemas/db.js";
import { type CliResult, fleetctl, runCli } from "../support/fleetlet-cli.js";
import { type RegistryFixture, registriesConfig, startRegistry } from "../support/registry.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";

const rootfs = inject("busyboxRootfs");
const APPS = 10;
let reg: RegistryFixture;
let root: string;
let work: string;
let config: string;

const app = (i: number) => `${reg.host}/stress/app-${i}:1`;
const fleetlet = (...args: string[]) => runCli("fleetlet", ["--root", root, "--config", config, ...args]);
const db = (): DbData => JSON.parse(readFileSync(join(root, "db.json"), "utf8"));
const hex = (digest: string) => digest.slice("sha256:".length);

beforeAll(async () => {
  reg = await startRegistry({ auth: "htpasswd" });
  root = freshRoot();
  work = mkdtempSync(join(tmpdir(), "fleetlet-stress-"));
  config = join(work, "config.json");
  const registries = registriesConfig(reg);
  writeFileSync(config, JSON.stringify({ deviceId: "dev-stress", registries }));
  const base = `${reg.host}/stress/base:1`;
  expect(fleetctl(["--config", config, "push", rootfs, base]).status).toBe(0);
  const pushes = Array.from({ length: APPS }, (_, i) => {
    const top = join(work, `top-${i}`);
    mkdirSync(join(top, "etc"), { recursive: true });
    writeFileSync(join(top, "etc", "app-id"), `${i}\n`);
    writeFileSync(join(top, "payload"), createHash("sha512").update(String(i)).digest().toString("hex").repeat(4096));
    return runCli("fleetctl", ["--config", config, "push", "--base", base, top, app(i)]);
  });
  for (const r of await Promise.all(pushes)) expect(r.status, r.stderr).toBe(0);
});

afterAll(async () => {
  await cleanupRoot(root);
  await reg.stop();
});

function deployment(n: number) {
  const i = n % 2;
  return {
    apiVersion: "fleetlet/v1",
    deployment: `stress-${n}`,
    generation: n,
    services: {
      web: { image: app(i), command: ["/bin/sh", "-c", "cat /etc/app-id; exec sleep 1000"], stopTimeoutMs: 200 },
    },
    update: { healthyWithinMs: 5000 },
  };
}

async function applies(count: number): Promise<CliResult[]> {
  const out: CliResult[] = [];
  for (let n = 1; n <= count; n++) {
    const file = join(work, `deploy-${n}.json`);
    writeFileSync(file, JSON.stringify(deployment(n)));
    out.push(await fleetlet("apply", file));
  }
  return out;
}

async function pruneUntil(done: Promise<unknown>): Promise<CliResult[]> {
  let finished = false;
  void done.finally(() => {
    finished = true;
  });
  const out: CliResult[] = [];
  while (!finished) out.push(await fleetlet("prune"));
  return out;
}

describe("the store under concurrent processes", () => {
  it("loses no record and no byte while prune loops beside ten pulls and an agent applying deployments", async () => {
    const pulls = Promise.all(Array.from({ length: APPS }, (_, i) => fleetlet("pull", app(i))));
    const applying = applies(4);
    const work = Promise.all([pulls, applying]);
    const prunes = await pruneUntil(work);
    const [pulled, applied] = await work;

    for (const r of pulled) expect(r.status, r.stderr).toBe(0);
    for (const r of applied) expect(r.status, r.stderr).toBe(0);
    for (const r of prunes) expect(r.status, r.stderr).toBe(0);
    expect(prunes.length).toBeGreaterThan(1);
    expect(applied.at(-1)!.stdout).toMatch(/deployment stress-4 generation 4: converged/);

    const state = db();
    // Every image record is there.
    expect(Object.keys(state.images).sort()).toEqual(Array.from({ length: APPS }, (_, i) => app(i)).sort());
    // Every blob is what its name says.
    const blobs = readdirSync(join(root, "blobs", "sha256"));
    for (const name of blobs) {
      const bytes = readFileSync(join(root, "blobs", "sha256", name));
      expect(createHash("sha256").update(bytes).digest("hex"), `blob ${name}`).toBe(name);
    }
    // Nothing a record names is missing, and every snapshot is whole: the base and the app's own layer.
    const named = { blobs: new Set<string>(), chains: new Set<string>() };
    for (const image of Object.values(state.images)) {
      for (const d of [image.digest, image.configDigest, ...image.layers.map((l) => l.digest)]) named.blobs.add(hex(d));
      for (const l of image.layers) named.chains.add(hex(l.chainId));
      const top = join(root, "layers", hex(image.layers.at(-1)!.chainId));
      const baseLayer = join(root, "layers", hex(image.layers[0]!.chainId));
      expect(readFileSync(join(top, "etc", "app-id"), "utf8")).toBe(`${image.ref.match(/app-(\d+)/)![1]}\n`);
      expect(existsSync(join(baseLayer, "bin", "busybox")), `${image.ref}'s base layer`).toBe(true);
    }
    for (const b of named.blobs) expect(blobs, `blob ${b}`).toContain(b);
    // Every lease was released.
    expect(state.leases).toEqual({});

    // Nothing that no record and no lease names is left: a last collection finds nothing to do.
    const last = await fleetlet("prune");
    expect(last.stdout).toMatch(/removed 0 blobs, 0 layers and 0 partial downloads/);
    expect(new Set(readdirSync(join(root, "blobs", "sha256")))).toEqual(named.blobs);
    expect(new Set(readdirSync(join(root, "layers")))).toEqual(named.chains);
    expect(readdirSync(join(root, "ingest")).filter((n) => !n.endsWith(".lock"))).toEqual([]);
  });
});
