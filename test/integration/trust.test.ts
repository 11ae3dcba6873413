/**
 * Trust, end to end: a real `fleetlet agent` that trusts one signing key,
 * behind a real mosquitto, driven by the real `fleetctl` with signed
 * documents. A forged document must not shut out the device's groups, an
 * expired one is refused, and plaintext MQTT is taken only by name and said
 * aloud at start.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createPrivateKey } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { signDocument } from "../../agent/protocol/signature.js";
import type { ReportedState } from "../../schemas/reported.js";
import { FLEETLET_BIN, runCli } from "../support/fleetlet-cli.js";
import { freePort } from "../support/free-port.js";
import { startMosquitto } from "../support/mosquitto.js";
import { type RegistryFixture, registriesConfig, startRegistry } from "../support/registry.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";
import { type WaitForOptions, waitFor } from "../support/wait-for.js";

const rootfs = inject("busyboxRootfs");
const DEVICE = "dev-trust-1";
let reg: RegistryFixture;
let broker: Awaited<ReturnType<typeof startMosquitto>>;
let root: string;
let work: string;
let config: string;
let opConfig: string;
let keyFile: string;
let image: string;
let agent: ChildProcess | undefined;
let agentStderr = "";
let operator: mqtt.MqttClient;
const reports: ReportedState[] = [];
const events: { type: string; [k: string]: unknown }[] = [];

const latest = () => reports.at(-1);
const reportWait = (timeoutMs = 40_000): WaitForOptions => ({
  timeoutMs,
  intervalMs: 100,
  context: () => `last report: ${JSON.stringify(latest())}; agent said: ${agentStderr.slice(-2000)}`,
});
const fleetctl = (args: string[]) => runCli("fleetctl", ["--config", opConfig, ...args]);

function docFile(name: string, extra: Record<string, unknown> = {}): string {
  const file = join(work, `${name}.json`);
  writeFileSync(
    file,
    JSON.stringify({
      apiVersion: "fleetlet/v1",
      deployment: name,
      services: {
        web: { image, command: ["/bin/sh", "-c", `echo ${name}; exec sleep 1000`], stopTimeoutMs: 300 },
      },
      update: { healthyWithinMs: 3000 },
      ...extra,
    }),
  );
  return file;
}

function publish(topic: string, payload: unknown): Promise<unknown> {
  return operator.publishAsync(topic, typeof payload === "string" ? payload : JSON.stringify(payload), {
    qos: 1,
    retain: true,
  });
}

async function converged(deployment: string): Promise<ReportedState> {
  return waitFor(
    `converged on ${deployment}`,
    () => {
      const r = latest();
      return r?.deployment === deployment && r.phase === "converged" ? r : undefined;
    },
    reportWait(),
  );
}

beforeAll(async () => {
  [reg, broker] = await Promise.all([startRegistry({ auth: "htpasswd" }), startMosquitto()]);
  root = freshRoot();
  work = mkdtempSync(join(tmpdir(), "fleetlet-trust-"));
  keyFile = join(work, "ops.key");
  const keygen = await runCli("fleetctl", ["keygen", keyFile]);
  expect(keygen.status, keygen.stderr).toBe(0);
  const registries = registriesConfig(reg);
  opConfig = join(work, "operator.json");
  writeFileSync(opConfig, JSON.stringify({ mqtt: { url: broker.url, insecure: true }, registries }));
  config = join(work, "device.json");
  writeFileSync(
    config,
    JSON.stringify({
      deviceId: DEVICE,
      groups: ["pilot"],
      mqtt: { url: broker.url, insecure: true },
      registries,
      api: { listen: `127.0.0.1:${await freePort()}`, socket: join(work, "api.sock") },
      trustedKeys: [keygen.stdout.trim()],
    }),
  );
  image = `${reg.host}/trust/busybox:1`;
  const push = await fleetctl(["push", rootfs, image]);
  expect(push.status, push.stderr).toBe(0);
  operator = await mqtt.connectAsync(broker.url, { clientId: "operator-trust" });
  await operator.subscribeAsync([`fleet/devices/${DEVICE}/reported`, `fleet/devices/${DEVICE}/events`], { qos: 1 });
  operator.on("message", (topic, payload) => {
    if (!payload.length) return;
    if (topic.endsWith("/reported")) reports.push(JSON.parse(payload.toString()));
    else events.push(JSON.parse(payload.toString()));
  });
  agent = spawn(process.execPath, [FLEETLET_BIN, "--root", root, "--config", config, "agent", "--heartbeat", "2"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  agent.stderr!.on("data", (d) => {
    agentStderr += d;
  });
  await waitFor("the agent's first report", () => latest(), reportWait());
});

afterAll(async () => {
  if (agent && agent.exitCode === null) {
    const exited = new Promise((r) => agent!.once("exit", r));
    agent.kill("SIGTERM");
    await exited;
  }
  await operator?.endAsync(true);
  if (root) await cleanupRoot(root);
  await Promise.all([reg?.stop(), broker?.stop()]);
});

describe("a device that trusts a signing key", () => {
  it("converges on a signed group deployment and reports that it had no earlier generation, and until when the document holds", async () => {
    const deploy = await fleetctl([
      "deploy",
      "--group",
      "pilot",
      "--sign-key",
      keyFile,
      "--valid-for",
      "1h",
      docFile("g1"),
    ]);
    expect(deploy.status, deploy.stderr).toBe(0);
    expect(deploy.stdout).toMatch(/signed, valid until \d{4}-\d\d-\d\dT/);
    const r = await converged("g1");
    expect(r.source).toBe("group:pilot");
    expect(r.lastAccepted).toMatchObject({ deployment: "g1", signed: true, previousGeneration: null });
    const notAfter = Date.parse(r.lastAccepted!.notAfter!);
    expect(notAfter).toBeGreaterThan(Date.now() + 50 * 60_000);
    expect(notAfter).toBeLessThanOrEqual(Date.now() + 60 * 60_000);
  });

  it("refuses an unsigned document on its own topic and still applies the next signed group deployment", async () => {
    const pid = latest()!.services.web!.pid;
    const forged = JSON.parse(readFileSync(docFile("forged"), "utf8"));
    await publish(`fleet/devices/${DEVICE}/desired`, { ...forged, generation: 1000, target: `device/${DEVICE}` });
    const rejected = await waitFor(
      "the forged document rejected",
      () => (latest()?.phase === "rejected" ? latest() : undefined),
      reportWait(),
    );
    expect(rejected.lastError).toMatchObject({
      code: "E_BAD_SIGNATURE",
      message: expect.stringContaining("signature: the document is not signed"),
    });
    expect(rejected).toMatchObject({ deployment: "g1", source: "group:pilot" });
    expect(rejected.services.web!.pid).toBe(pid);
    expect(events).toContainEqual(expect.objectContaining({ type: "rejected", code: "E_BAD_SIGNATURE" }));

    const deploy = await fleetctl(["deploy", "--group", "pilot", "--sign-key", keyFile, docFile("g2")]);
    expect(deploy.status, deploy.stderr).toBe(0);
    const r = await converged("g2");
    expect(r.services.web!.pid).not.toBe(pid);
    expect(r.lastAccepted).toMatchObject({ deployment: "g2", previousGeneration: 1, notAfter: null });
  });

  it("refuses a signed document past its notAfter with E_EXPIRED, and keeps running what it runs", async () => {
    const pid = latest()!.services.web!.pid;
    const stale = signDocument(
      {
        ...JSON.parse(readFileSync(docFile("stale"), "utf8")),
        generation: 50,
        target: "group/pilot",
        notAfter: new Date(Date.now() - 60_000).toISOString(),
      },
      createPrivateKey(readFileSync(keyFile)),
    );
    await publish("fleet/groups/pilot/desired", stale);
    const r = await waitFor(
      "the expired document rejected",
      () => (latest()?.lastError?.code === "E_EXPIRED" ? latest() : undefined),
      reportWait(),
    );
    expect(r).toMatchObject({ phase: "rejected", deployment: "g2", generation: 2 });
    expect(r.lastError!.message).toContain("notAfter: the document expired at");
    expect(r.services.web!.pid).toBe(pid);
  });

  it("rolls out with --valid-for: the wave's signed document carries a notAfter that long after it went out", async () => {
    const r = await fleetctl([
      ...["rollout", "--group", "pilot", "--sign-key", keyFile, "--valid-for", "2h"],
      ...["--healthy-within", "60s", docFile("r1")],
    ]);
    expect(r.status, r.stderr).toBe(0);
    const report = await converged("r1");
    expect(report.lastAccepted).toMatchObject({ deployment: "r1", source: "group:pilot", signed: true });
    const notAfter = Date.parse(report.lastAccepted!.notAfter!);
    expect(notAfter).toBeGreaterThan(Date.now() + 110 * 60_000);
    expect(notAfter).toBeLessThanOrEqual(Date.now() + 120 * 60_000);
  });

  it("has fleetctl refuse to publish a document whose notAfter has passed", async () => {
    const file = docFile("late", { notAfter: "2001-01-01T00:00:00Z" });
    const r = await fleetctl(["deploy", "--group", "pilot", "--sign-key", keyFile, file]);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("notAfter: 2001-01-01T00:00:00Z has passed");
    expect(r.stderr).toContain("[E_EXPIRED]");
  });
});

describe("plaintext MQTT", () => {
  it("is refused at start without mqtt.insecure, naming the field", async () => {
    const plain = join(work, "plain.json");
    writeFileSync(
      plain,
      JSON.stringify({
        deviceId: "dev-trust-plain",
        mqtt: { url: broker.url },
        api: { listen: `127.0.0.1:${await freePort()}`, socket: join(work, "plain.sock") },
      }),
    );
    const other = freshRoot();
    try {
      const r = await runCli("fleetlet", ["--root", other, "--config", plain, "agent"], { timeoutMs: 20_000 });
      expect(r.status, `the agent ran on: ${r.stderr}`).not.toBeNull();
      expect(r.status).not.toBe(0);
      expect(r.stderr).toContain("mqtt.url: plaintext MQTT is refused: use mqtts:// or wss://");
      expect(r.stderr).toContain("[E_INVALID_CONFIG]");
    } finally {
      await cleanupRoot(other);
    }
  });

  it("is said once at start when mqtt.insecure allows it, on stderr and as an event", async () => {
    const lines = agentStderr.split("\n").filter((l) => l.includes("warning: mqtt.insecure:"));
    expect(lines).toEqual([expect.stringContaining("the link to the broker is plaintext (mqtt://)")]);
    expect(events.filter((e) => e.type === "warning" && e.field === "mqtt.insecure")).toHaveLength(1);
  });
});
