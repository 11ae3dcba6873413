/**
 * The agent's MQTT session against a real mosquitto: desired docs in, status,
 * reported and events out, the last will, reconnects, TLS and mTLS, and the
 * fallback to MQTT 3.1.1 (against a tiny fake broker, as mosquitto speaks 5).
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { connectAsync, type MqttClient } from "mqtt";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { FleetError } from "../../agent/errors.js";
import { MqttSession, type MqttSessionOptions } from "../../agent/transport/mqtt-session.js";
import { startCountingProxy } from "../support/counting-proxy.js";
import { createTestCa, type MosquittoFixture, startMosquitto } from "../support/mosquitto.js";
import type { ChildSessionOptions } from "../support/mqtt-child.js";
import { waitFor } from "../support/wait-for.js";

const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  for (const undo of cleanups.splice(0).reverse()) await undo();
});

const newId = (what = "dev") => `${what}-${randomBytes(4).toString("hex")}`;

/** An operator-side client that records what it receives. */
async function operator(url: string, opts: { ca?: string; subscribe?: string[] } = {}) {
  const client: MqttClient = await connectAsync(url, {
    clientId: newId("op"),
    protocolVersion: 5,
    reconnectPeriod: 0,
    ...(opts.ca ? { ca: opts.ca } : {}),
  });
  cleanups.push(() => client.endAsync(true));
  const received: { topic: string; text: string; retain: boolean }[] = [];
  client.on("message", (topic, payload, packet) =>
    received.push({ topic, text: payload.toString(), retain: packet.retain }),
  );
  if (opts.subscribe) await client.subscribeAsync(opts.subscribe, { qos: 1 });
  const docs = (topic: string) =>
    received.filter((m) => m.topic === topic).map((m) => JSON.parse(m.text) as Record<string, unknown>);
  return { client, received, docs };
}

/** The retained message a new subscriber gets on `topic`. */
async function retained(url: string, topic: string, ca?: string): Promise<Record<string, unknown>> {
  const op = await operator(url, { subscribe: [topic], ...(ca ? { ca } : {}) });
  const msg = await waitFor(`a retained message on ${topic}`, () => op.received.find((m) => m.topic === topic));
  expect(msg.retain).toBe(true);
  return JSON.parse(msg.text);
}

/** test/support/mqtt-child.ts in its own node process (through vite-node, which compiles it). */
function spawnSessionChild(opts: ChildSessionOptions) {
  const viteNode = fileURLToPath(new URL("../../node_modules/vite-node/vite-node.mjs", import.meta.url));
  const script = fileURLToPath(new URL("../support/mqtt-child.ts", import.meta.url));
  return spawn(process.execPath, [viteNode, script], {
    env: { ...process.env, FLEETLET_TEST_SESSION: JSON.stringify(opts) },
    stdio: ["ignore", "pipe", "pipe"],
  });
}

type Desired = { source: string; text: string };

function session(
  url: string,
  overrides: Omit<Partial<MqttSessionOptions>, "mqtt"> & { mqtt?: Partial<MqttSessionOptions["mqtt"]> } = {},
) {
  const desired: Desired[] = [];
  const changes: boolean[] = [];
  const logs: string[] = [];
  const s = new MqttSession({
    deviceId: newId(),
    groups: [],
    onDesired: (source, payload) => desired.push({ source: `${source.kind}:${source.name}`, text: payload.toString() }),
    onConnectionChange: (up) => changes.push(up),
    agentVersion: "9.9.9-test",
    log: (line) => logs.push(line),
    ...overrides,
    mqtt: { url, prefix: "fleet", ...overrides.mqtt },
  });
  cleanups.push(() => s.stop());
  return { s, desired, changes, logs };
}

describe("MqttSession against mosquitto", () => {
  let broker: MosquittoFixture;
  beforeAll(async () => {
    broker = await startMosquitto();
  });
  afterAll(() => broker?.stop());

  it("receives the retained device doc published before it connected, its groups' docs, and cleared docs as empty payloads", async () => {
    const deviceId = newId();
    const op = await operator(broker.url);
    await op.client.publishAsync(`fleet/devices/${deviceId}/desired`, '{"generation":1}', { qos: 1, retain: true });
    await op.client.publishAsync("fleet/groups/pilot/desired", '{"generation":7}', { qos: 1, retain: true });
    await op.client.publishAsync("fleet/groups/other/desired", '{"generation":99}', { qos: 1, retain: true });
    const { s, desired } = session(broker.url, { deviceId, groups: ["pilot", "canary"] });
    await s.start({ timeoutMs: 10_000 });
    expect(s.connected).toBe(true);
    await waitFor("both retained docs", () => desired.length >= 2);
    await op.client.publishAsync("fleet/groups/canary/desired", '{"generation":3}', { qos: 1 });
    await op.client.publishAsync(`fleet/devices/${deviceId}/desired`, "", { qos: 1, retain: true });
    await waitFor("the canary doc and the cleared device doc", () => desired.length >= 4);
    expect(desired.slice(0, 2).sort((a, b) => a.source.localeCompare(b.source))).toEqual([
      { source: `device:${deviceId}`, text: '{"generation":1}' },
      { source: "group:pilot", text: '{"generation":7}' },
    ]);
    expect(desired.slice(2)).toEqual([
      { source: "group:canary", text: '{"generation":3}' },
      { source: `device:${deviceId}`, text: "" },
    ]);
  });

  it("shows online:true on connect, and after stop() online:false and the last reported doc, both retained", async () => {
    const id = newId();
    const { s, changes } = session(broker.url, { deviceId: id, reportedMinIntervalMs: 60_000 });
    await s.start();
    expect(await retained(broker.url, `fleet/devices/${id}/status`)).toMatchObject({
      online: true,
      deviceId: id,
      version: "9.9.9-test",
    });
    s.publishReported({ n: 1 });
    s.publishReported({ n: 2 }); // held back by the minimum gap: stop() must flush it
    await s.stop();
    expect(changes).toEqual([true, false]);
    expect(await retained(broker.url, `fleet/devices/${id}/status`)).toMatchObject({ online: false, deviceId: id });
    expect(await retained(broker.url, `fleet/devices/${id}/reported`)).toEqual({ n: 2 });
  });

  it("coalesces reported docs: ten quick ones make at most three publishes, the tenth last and retained", async () => {
    const deviceId = newId();
    const topic = `fleet/devices/${deviceId}/reported`;
    const watcher = await operator(broker.url, { subscribe: [topic] });
    const { s } = session(broker.url, { deviceId, reportedMinIntervalMs: 300 });
    await s.start();
    for (let n = 1; n <= 10; n++) s.publishReported({ n });
    await waitFor("the tenth doc", () => watcher.docs(topic).some((d) => d.n === 10));
    await delay(500); // nothing may follow it
    const seen = watcher.docs(topic);
    expect(seen.length).toBeLessThanOrEqual(3);
    expect(seen.at(-1)).toEqual({ n: 10 });
    expect(await retained(broker.url, topic)).toEqual({ n: 10 });
  });

  it("builds a reported doc offered as a builder once, when it is due, and drops one that changes nothing", async () => {
    const deviceId = newId();
    const topic = `fleet/devices/${deviceId}/reported`;
    const watcher = await operator(broker.url, { subscribe: [topic] });
    const { s } = session(broker.url, { deviceId, reportedMinIntervalMs: 300 });
    await s.start();
    let n = 0;
    let builds = 0;
    const build = () => {
      builds++;
      return { n };
    };
    for (let step = 1; step <= 10; step++) {
      n = step;
      s.publishReported(build); // the steps of an apply
    }
    expect(builds).toBe(0);
    await waitFor("the doc of the last step", () => watcher.docs(topic).some((d) => d.n === 10));
    expect(builds).toBe(1);
    s.publishReported(build, { settled: true }); // the same doc: built to compare, not published
    expect(builds).toBe(2);
    n = 11;
    s.publishReported(build, { settled: true });
    await waitFor("the settled doc", () => watcher.docs(topic).some((d) => d.n === 11));
    expect(builds).toBe(3);
    expect(watcher.docs(topic)).toEqual([{ n: 10 }, { n: 11 }]);
  });

  it("rate-limits events by dropping progress events, never lifecycle ones", async () => {
    const deviceId = newId();
    const topic = `fleet/devices/${deviceId}/events`;
    const watcher = await operator(broker.url, { subscribe: [topic] });
    const { s } = session(broker.url, { deviceId, eventsPerSecond: 5 });
    await s.start();
    for (let i = 0; i < 20; i++) s.publishEvent({ type: "progress", i });
    for (const type of ["started", "unhealthy", "rolledBack"]) s.publishEvent({ type });
    await waitFor("the lifecycle events", () => watcher.docs(topic).filter((d) => d.type !== "progress").length === 3);
    await delay(300);
    const progress = watcher.docs(topic).filter((d) => d.type === "progress");
    expect(progress.length).toBeGreaterThan(0);
    expect(progress.length).toBeLessThanOrEqual(5);
    expect(watcher.received.every((m) => !m.retain)).toBe(true);
  });

  it("keeps its persistent session: a desired doc sent while it was away arrives when it comes back", async () => {
    const deviceId = newId();
    const first = session(broker.url, { deviceId });
    await first.s.start();
    await first.s.stop();
    const op = await operator(broker.url);
    await op.client.publishAsync(`fleet/devices/${deviceId}/desired`, '{"generation":5}', { qos: 1 }); // not retained
    const second = session(broker.url, { deviceId });
    await second.s.start();
    await waitFor("the queued doc", () => second.desired.length > 0);
    expect(second.desired).toEqual([{ source: `device:${deviceId}`, text: '{"generation":5}' }]);
    expect(second.logs.join("\n")).toMatch(/session resumed/);
  });

  it("hints at a twin when another client with the same device id takes its session over", async () => {
    const deviceId = newId();
    const first = session(broker.url, { deviceId });
    await first.s.start();
    const twin = session(broker.url, { deviceId });
    await twin.s.start();
    const line = await waitFor("the takeover in the log", () =>
      first.logs.find((l) => l.includes("lost the connection")),
    );
    expect(line).toMatch(
      new RegExp(
        `^lost the connection to MQTT broker ${broker.url} after [0-9.]+ s; if this repeats, check that no other client connects as ${deviceId}$`,
      ),
    );
    await twin.s.stop();
  });

  it("leaves online:false behind through its last will when the agent process is killed", async () => {
    const deviceId = newId();
    const topic = `fleet/devices/${deviceId}/status`;
    const watcher = await operator(broker.url, { subscribe: [topic] });
    const child = spawnSessionChild({ deviceId, url: broker.url });
    let stderr = "";
    child.stderr?.on("data", (c: Buffer) => (stderr += c.toString()));
    cleanups.push(() => child.kill("SIGKILL"));
    await waitFor("the child's online status", () => watcher.docs(topic).some((d) => d.online === true), {
      timeoutMs: 20_000,
      context: () => `child stderr: ${stderr || "(none)"}`,
    });
    const exited = once(child, "exit");
    child.kill("SIGKILL");
    await exited;
    await waitFor("the last will", () => watcher.docs(topic).some((d) => d.online === false));
    expect(await retained(broker.url, topic)).toMatchObject({ online: false, deviceId });
  });

  it("rejects unreadable TLS files, naming the field and the path", async () => {
    const { s } = session("mqtts://127.0.0.1:1", { mqtt: { ca: "/nonexistent/ca.pem" } });
    const err = await s.start().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FleetError);
    expect(err).toMatchObject({
      code: "E_INVALID_CONFIG",
      message: expect.stringContaining("mqtt.ca /nonexistent/ca.pem: cannot read it (ENOENT)"),
    });
  });
});

describe("MqttSession reconnects", () => {
  it("runs offline, connects when the broker appears, and resubscribes after a broker restart", async () => {
    const broker = await startMosquitto();
    cleanups.push(() => broker.stop());
    broker.kill9();
    const deviceId = newId();
    const { s, desired, changes } = session(broker.url, { deviceId });
    const started = Date.now();
    await s.start({ timeoutMs: 300 });
    expect(Date.now() - started).toBeLessThan(2000);
    expect(s.connected).toBe(false);
    await broker.restart();
    await waitFor("the first connection", () => s.connected);
    await broker.restart(); // a new broker without persistence: no session, no retained messages
    await waitFor("the reconnection", () => changes.length >= 3 && s.connected);
    expect(changes).toEqual([true, false, true]);
    expect(await retained(broker.url, `fleet/devices/${deviceId}/status`)).toMatchObject({ online: true });
    const op = await operator(broker.url);
    await op.client.publishAsync(`fleet/devices/${deviceId}/desired`, '{"generation":2}', { qos: 1, retain: true });
    await waitFor("the doc published after the restart", () => desired.length > 0);
    expect(desired).toEqual([{ source: `device:${deviceId}`, text: '{"generation":2}' }]);
  });
});

describe("MqttSession after a dropped link", () => {
  it("sends the events held while offline before the reported document they led to", async () => {
    const broker = await startMosquitto();
    cleanups.push(() => broker.stop());
    const proxy = await startCountingProxy({ host: "127.0.0.1", port: broker.port });
    cleanups.push(() => proxy.stop());
    const deviceId = newId();
    const [events, reported] = ["events", "reported"].map((c) => `fleet/devices/${deviceId}/${c}`) as [string, string];
    const watcher = await operator(broker.url, { subscribe: [events, reported] });
    let dropped = false;
    const { s } = session(`mqtt://${proxy.host}`, {
      deviceId,
      onConnectionChange: (up) => {
        if (up || dropped) return;
        // Offline now, and for the first reconnect's delay at least: the event is held, the doc waits.
        dropped = true;
        s.publishEvent({ type: "rolledBack" });
        s.publishReported({ n: 2 }, { settled: true });
      },
    });
    await s.start();
    s.publishReported({ n: 1 }, { settled: true });
    await waitFor("the first doc", () => watcher.docs(reported).length === 1);
    proxy.dropConnections();
    await waitFor("the doc made offline", () => watcher.docs(reported).some((d) => d.n === 2), { timeoutMs: 30_000 });
    await waitFor("the held event", () => watcher.docs(events).length === 1);
    const order = watcher.received.map((m) => `${m.topic.split("/").at(-1)} ${m.text}`);
    expect(order.filter((m) => !m.startsWith('reported {"n":1'))).toEqual([
      expect.stringMatching(/^events \{"type":"rolledBack"/),
      'reported {"n":2}',
    ]);
  });
});

describe("MqttSession with broker authentication", () => {
  it("logs in with a password, is refused a wrong one, and says which publish the ACL refused", async () => {
    const dir = mkdtempSync(join(tmpdir(), "fleetlet-acl-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const deviceId = newId();
    const aclFile = join(dir, "acl");
    writeFileSync(
      aclFile,
      `user agent\ntopic read fleet/devices/${deviceId}/desired\ntopic write fleet/devices/${deviceId}/status\n`,
    );
    const broker = await startMosquitto({ passwordFile: { username: "agent", password: "s3cret" }, aclFile });
    cleanups.push(() => broker.stop());

    const wrong = session(broker.url, { deviceId, mqtt: { username: "agent", password: "guess" } });
    await expect(wrong.s.start({ timeoutMs: 10_000 })).rejects.toMatchObject({
      code: "E_INVALID_CONFIG",
      message: expect.stringMatching(
        /refused the connection: .*(Bad User Name or Password|Not authorized).*check deviceId, mqtt.username, mqtt.password/,
      ),
    });

    const ok = session(broker.url, { deviceId, mqtt: { username: "agent", password: "s3cret" } });
    await ok.s.start();
    expect(ok.s.connected).toBe(true);
    ok.s.publishReported({ n: 1 }); // the ACL lets this device write its status only
    const line = await waitFor("the refusal in the log", () => ok.logs.find((l) => l.includes("failed")));
    expect(line).toBe(
      `MQTT broker ${broker.url}: publishing to fleet/devices/${deviceId}/reported failed: Publish error: Not authorized`,
    );
    expect(ok.s.connected).toBe(true);
  });
});

describe("MqttSession over TLS", () => {
  it("connects with the broker's CA and rejects a CA that did not sign the broker's certificate", async () => {
    const broker = await startMosquitto({ tls: true });
    cleanups.push(() => broker.stop());
    const ok = session(broker.url, { mqtt: { ca: broker.caFile } });
    await ok.s.start();
    expect(ok.s.connected).toBe(true);

    const dir = mkdtempSync(join(tmpdir(), "fleetlet-other-ca-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const other = createTestCa(dir, "other-ca");
    const bad = session(broker.url, { mqtt: { ca: other.cert } });
    const err = await bad.s.start({ timeoutMs: 10_000 }).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: "E_INVALID_CONFIG",
      message: expect.stringContaining(`MQTT broker ${broker.url}: TLS: the broker's certificate is not trusted`),
    });
    expect((err as Error).message).toContain(other.cert);
    expect(bad.s.connected).toBe(false);
  });

  it("reads the CA file again for each reconnect, so a CA replaced on disk takes effect", async () => {
    const broker = await startMosquitto({ tls: true });
    cleanups.push(() => broker.stop());
    const dir = mkdtempSync(join(tmpdir(), "fleetlet-ca-rotation-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const caFile = join(dir, "ca.pem");
    copyFileSync(broker.caFile, caFile);
    const { s, logs } = session(broker.url, { mqtt: { ca: caFile } });
    await s.start();
    copyFileSync(createTestCa(dir, "other-ca").cert, caFile);
    await broker.restart();
    await waitFor("the refusal of the broker's certificate", () =>
      logs.some((l) => l.includes("certificate is not trusted")),
    );
    expect(s.connected).toBe(false);
    copyFileSync(broker.caFile, caFile);
    await waitFor("the reconnection with the right CA", () => s.connected);
  });

  it("connects with a client certificate (mTLS) and is refused without one", async () => {
    const broker = await startMosquitto({ clientCerts: true });
    cleanups.push(() => broker.stop());
    const deviceId = newId();
    const ok = session(broker.url, { deviceId, mqtt: { ca: broker.caFile, ...broker.clientCert(deviceId) } });
    await ok.s.start();
    expect(ok.s.connected).toBe(true);

    const anonymous = session(broker.url, { mqtt: { ca: broker.caFile } });
    await expect(anonymous.s.start({ timeoutMs: 10_000 })).rejects.toMatchObject({
      code: "E_INVALID_CONFIG",
      message: expect.stringContaining("check mqtt.cert and mqtt.key"),
    });
  });
});

describe("MqttSession against a broker without MQTT 5", () => {
  it("falls back to MQTT 3.1.1 when the broker refuses version 5, and stays there", async () => {
    const levels: number[] = [];
    const sockets: Socket[] = [];
    const server = createServer((socket) => {
      sockets.push(socket);
      socket.once("data", (connect: Buffer) => {
        // CONNECT: type byte, remaining length (1-4 bytes, high bit = more), "\0\4MQTT", protocol level.
        let at = 1;
        while ((connect[at++] ?? 0) & 0x80);
        const level = connect[at + 6] ?? 0;
        levels.push(level);
        // What a 3.1.1 broker answers: a 3.1.1 CONNACK, "unacceptable protocol version" for anything but 4.
        socket.write(Buffer.from([0x20, 0x02, 0x00, level === 4 ? 0x00 : 0x01]));
        if (level !== 4) socket.end();
      });
      socket.on("error", () => {}); // the client may reset; only the levels matter here
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    cleanups.push(() => server.close());
    const port = (server.address() as { port: number }).port;
    const { s, logs } = session(`mqtt://127.0.0.1:${port}`);
    await s.start({ timeoutMs: 10_000 });
    expect(s.connected).toBe(true);
    expect(levels).toEqual([5, 4]);
    expect(logs.join("\n")).toMatch(/refused MQTT 5 .*falling back to MQTT 3\.1\.1/);
    // After a drop it reconnects with 3.1.1 straight away. (It gets a CONNACK but this fake never
    // acknowledges the unacked status publish MQTT.js replays, so the session does not report itself connected.)
    for (const socket of sockets) socket.destroy();
    await waitFor("the reconnection", () => levels.length >= 3);
    expect(levels.slice(1).every((l) => l === 4)).toBe(true);
  });

  it("asks the broker for mqtt.keepaliveSec, and for 240 s (suited to cellular links) without it", async () => {
    const keepalives: number[] = [];
    const server = createServer((socket) => {
      socket.once("data", (connect: Buffer) => {
        // CONNECT: type byte, remaining length, "\0\4MQTT", protocol level, flags, then the keepalive (2 bytes).
        let at = 1;
        while ((connect[at++] ?? 0) & 0x80);
        keepalives.push(connect.readUInt16BE(at + 8));
        socket.destroy();
      });
      socket.on("error", () => {}); // destroyed on purpose; only the CONNECT matters here
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    cleanups.push(() => server.close());
    const url = `mqtt://127.0.0.1:${(server.address() as { port: number }).port}`;
    for (const mqtt of [{ keepaliveSec: 45 }, {}]) {
      const { s } = session(url, { mqtt });
      const started = s.start({ timeoutMs: 100 });
      await waitFor("a CONNECT", () => keepalives.length === (mqtt.keepaliveSec ? 1 : 2));
      await started;
      await s.stop();
    }
    expect(keepalives).toEqual([45, 240]);
  });
});
