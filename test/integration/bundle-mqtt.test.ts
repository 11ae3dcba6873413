/**
 * The release bundle's MQTT client: deploy/js-bundle.ts rewrites mqtt.js so
 * that each transport (TCP, TLS, WebSockets) and SOCKS are required on their
 * first use, and gives it Node's streams for readable-stream's copy. The
 * bundled fleetctl, which shares that chunk with the daemon, publishes over
 * a plaintext and over a TLS broker, as `fleetctl deploy` from a checkout does.
 */
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connectAsync } from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type MosquittoFixture, startMosquitto } from "../support/mosquitto.js";
import { REPO } from "../support/release-bundle.js";

const work = mkdtempSync(join(tmpdir(), "fleetlet-bundle-mqtt-"));
const brokers: MosquittoFixture[] = [];
let fleetctlJs: string;

beforeAll(() => {
  const r = spawnSync(process.execPath, [join(REPO, "deploy/js-bundle.ts"), join(work, "lib")], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`deploy/js-bundle.ts failed: ${r.stderr || r.error}`);
  writeFileSync(join(work, "package.json"), JSON.stringify({ name: "fleetlet", private: true, type: "module" }));
  fleetctlJs = join(work, "lib/fleetctl.js");
}, 120_000);
afterAll(async () => {
  await Promise.all(brokers.map((b) => b.stop()));
  rmSync(work, { recursive: true, force: true });
});

/** Runs the bundled fleetctl to its exit. */
function bundledFleetctl(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [fleetctlJs, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let [stdout, stderr] = ["", ""];
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    const killer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("error", reject);
    child.on("close", (status) => {
      clearTimeout(killer);
      resolve({ status, stdout, stderr });
    });
  });
}

/** The retained desired document of `device`, as a new subscriber gets it. */
async function retainedDesired(broker: MosquittoFixture, device: string): Promise<Record<string, unknown>> {
  const client = await connectAsync(broker.url, broker.caFile ? { ca: readFileSync(broker.caFile) } : {});
  try {
    const got = new Promise<Record<string, unknown>>((resolve) =>
      client.on("message", (_topic, payload) => resolve(JSON.parse(payload.toString()))),
    );
    await client.subscribeAsync(`fleet/devices/${device}/desired`, { qos: 1 });
    return await got;
  } finally {
    await client.endAsync();
  }
}

async function deployThrough(broker: MosquittoFixture, mqtt: Record<string, unknown>, device: string) {
  const config = join(work, `${device}.json`);
  writeFileSync(config, JSON.stringify({ deviceId: "operator", mqtt: { url: broker.url, ...mqtt } }));
  const doc = join(work, `${device}-doc.json`);
  writeFileSync(doc, JSON.stringify({ apiVersion: "fleetlet/v1", deployment: `via-${device}`, services: {} }));
  const r = await bundledFleetctl(["--config", config, "deploy", "--device", device, doc]);
  expect(r.status, r.stderr).toBe(0);
  expect(await retainedDesired(broker, device)).toMatchObject({ deployment: `via-${device}` });
}

describe("the bundle's MQTT client", () => {
  it("publishes to a plaintext broker (mqtt://, insecure)", async () => {
    const broker = await startMosquitto();
    brokers.push(broker);
    await deployThrough(broker, { insecure: true }, "dev-bundle-tcp");
  });

  it("publishes to a TLS broker (mqtts://) with its CA, TLS required on first use", async () => {
    const broker = await startMosquitto({ tls: true });
    brokers.push(broker);
    expect(broker.url).toMatch(/^mqtts:/);
    await deployThrough(broker, { ca: broker.caFile }, "dev-bundle-tls");
  });
});
