/**
 * What an idle agent sends over MQTT: nothing but keepalives once converged,
 * one reported document per change, and after a reconnect only what changed.
 * The agent talks to the broker through a counting proxy whose tap reads the
 * MQTT packets each way (plaintext here, so they can be read; the traffic
 * bench measures the same over TLS).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import mqtt from "mqtt";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import type { ReportedState } from "../../schemas/reported.js";
import { type CountingProxy, type Direction, startCountingProxy } from "../support/counting-proxy.js";
import { FLEETLET_BIN, fleetctl } from "../support/fleetlet-cli.js";
import { freePort } from "../support/free-port.js";
import { type MosquittoFixture, startMosquitto } from "../support/mosquitto.js";
import { type MqttFrame, mqttFrameReader } from "../support/mqtt-frames.js";
import { type RegistryFixture, registriesConfig, startRegistry } from "../support/registry.js";
import { cleanupRoot, freshRoot } from "../support/state-root.js";
import { type WaitForOptions, waitFor } from "../support/wait-for.js";

const rootfs = inject("busyboxRootfs");
const DEVICE = "dev-idle-1";
const REPORTED = `fleet/devices/${DEVICE}/reported`;
/** The agent's keepalive here: short, so that the idle spans below see several PINGREQs. */
const KEEPALIVE_SEC = 5;
/** How long the tests watch an idle link: three keepalive periods. */
const IDLE_MS = 3 * KEEPALIVE_SEC * 1000;
/** The first idle span outlasts the 30 s heartbeat the agent used to have by default. */
const LONG_IDLE_MS = 35_000;

let reg: RegistryFixture;
let broker: MosquittoFixture;
let proxy: CountingProxy;
let root: string;
let apiPort: number;
let agentProc: ChildProcess | undefined;
let operator: mqtt.MqttClient;
const reports: ReportedState[] = [];
type Seen = MqttFrame & { dir: Direction; conn: number };
const frames: Seen[] = [];

const latest = () => reports.at(-1);
const reportWait = (timeoutMs = 30_000): WaitForOptions => ({
  timeoutMs,
  intervalMs: 100,
  context: () => `last report: ${JSON.stringify(latest())}; last packets: ${JSON.stringify(frames.slice(-8))}`,
});
const since = (mark: number, pred: (f: Seen) => boolean) => frames.slice(mark).filter(pred);
const reportedPublishes = (mark: number) =>
  since(mark, (f) => f.dir === "up" && f.type === "PUBLISH" && f.topic === REPORTED);

beforeAll(async () => {
  [reg, broker] = await Promise.all([startRegistry({ auth: "htpasswd" }), startMosquitto()]);
  const readers = new Map<string, (chunk: Buffer) => void>();
  proxy = await startCountingProxy(
    { host: "127.0.0.1", port: broker.port },
    {
      tap: (dir, chunk, conn) => {
        const id = `${dir}-${conn}`;
        if (!readers.has(id))
          readers.set(
            id,
            mqttFrameReader((f) => frames.push({ ...f, dir, conn })),
          );
        readers.get(id)!(chunk);
      },
    },
  );
  root = freshRoot();
  const work = mkdtempSync(join(tmpdir(), "fleetlet-idle-"));
  apiPort = await freePort();
  const config = join(work, "config.json");
  writeFileSync(
    config,
    JSON.stringify({
      deviceId: DEVICE,
      mqtt: { url: `mqtt://${proxy.host}`, insecure: true, keepaliveSec: KEEPALIVE_SEC },
      registries: registriesConfig(reg),
      api: { listen: `127.0.0.1:${apiPort}`, socket: join(work, "api.sock"), token: "s3cret" },
    }),
  );
  const image = `${reg.host}/idle/busybox:1`;
  expect(fleetctl(["--config", config, "push", rootfs, image]).status).toBe(0);
  operator = mqtt.connect(broker.url, { clientId: "operator-idle" });
  await new Promise((r) => operator.once("connect", r));
  await operator.subscribeAsync([REPORTED], { qos: 1 });
  operator.on("message", (_topic, payload) => {
    if (payload.length) reports.push(JSON.parse(payload.toString()));
  });
  // No --heartbeat: the default.
  agentProc = spawn(process.execPath, [FLEETLET_BIN, "--root", root, "--config", config, "agent"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  agentProc.stderr!.resume();
  const service = { image, command: ["/bin/sh", "-c", "exec sleep 100000"], stopTimeoutMs: 100 };
  operator.publish(
    `fleet/devices/${DEVICE}/desired`,
    JSON.stringify({ apiVersion: "fleetlet/v1", deployment: "idle-1", generation: 1, services: { web: service } }),
    { qos: 1, retain: true },
  );
  // Converged, and past its health window (lastGood): the last change an apply makes.
  await waitFor(
    "converged and past its health window",
    () => (latest()?.phase === "converged" && latest()?.lastGood === "idle-1" ? true : undefined),
    reportWait(),
  );
});

afterAll(async () => {
  agentProc?.kill("SIGTERM");
  if (agentProc) await new Promise((r) => agentProc!.once("exit", r));
  operator?.end(true);
  await cleanupRoot(root);
  await Promise.all([reg.stop(), proxy?.stop(), broker.stop()]);
});

describe("an idle agent's MQTT traffic", () => {
  it("publishes nothing once converged: only PINGREQ and PINGRESP cross its one connection", async () => {
    const mark = frames.length;
    const connections = proxy.connections();
    await delay(LONG_IDLE_MS);
    const up = since(mark, (f) => f.dir === "up").map((f) => f.type);
    const down = since(mark, (f) => f.dir === "down").map((f) => f.type);
    expect(up.filter((t) => t !== "PINGREQ")).toEqual([]);
    expect(down.filter((t) => t !== "PINGRESP")).toEqual([]);
    expect(up.length).toBeGreaterThanOrEqual(2);
    expect(down.length).toBeGreaterThanOrEqual(2);
    expect(proxy.connections()).toBe(connections);
  });

  it("publishes the reported document once for a service restart", async () => {
    const before = latest()!.services.web!.pid;
    const mark = frames.length;
    const res = await fetch(`http://127.0.0.1:${apiPort}/v1/services/web/restart`, {
      method: "POST",
      headers: { authorization: "Bearer s3cret" },
    });
    expect(res.status).toBeLessThan(300);
    const after = await waitFor(
      "the restarted service reported running",
      () => {
        const web = latest()?.services.web;
        return web?.state === "running" && web.pid !== before ? web : undefined;
      },
      reportWait(),
    );
    await delay(IDLE_MS); // anything that would follow it
    const [publish] = reportedPublishes(mark);
    expect(reportedPublishes(mark)).toHaveLength(1);
    expect(publish!.aliased).toBe(true); // the connection named the topic before: a 2-byte MQTT 5 topic alias now
    expect(after.pid).toBeGreaterThan(1);
  });

  it("sends nothing unchanged after a reconnect: its status, its subscription, and no reported document", async () => {
    const mark = frames.length;
    const conn = proxy.connections() + 1;
    proxy.dropConnections();
    await waitFor(
      "the agent's new connection subscribed",
      () => (since(mark, (f) => f.conn === conn && f.type === "SUBACK").length > 0 ? true : undefined),
      reportWait(),
    );
    await delay(IDLE_MS);
    const up = since(mark, (f) => f.dir === "up" && f.conn === conn);
    expect(up.filter((f) => f.type === "PUBLISH").map((f) => f.topic)).toEqual([`fleet/devices/${DEVICE}/status`]);
    expect(up.filter((f) => !["CONNECT", "PUBLISH", "SUBSCRIBE", "PUBACK", "PINGREQ"].includes(f.type))).toEqual([]);
    expect(reportedPublishes(mark)).toEqual([]);
  });

  it("publishes the reported document again when the broker comes back without its session", async () => {
    const mark = frames.length;
    await broker.restart(); // persistence false: sessions and retained messages are gone
    await waitFor(
      "the reported document republished",
      () => (reportedPublishes(mark).length > 0 ? true : undefined),
      reportWait(),
    );
    await delay(IDLE_MS);
    expect(reportedPublishes(mark)).toHaveLength(1);
  });
});
