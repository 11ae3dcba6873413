/**
 * What a reconnect costs a metered link over TLS with client certificates:
 * the agent's session resumes the broker's TLS session instead of crossing
 * the link with both certificates again, but never under TLS files other
 * than the ones the ticket came with; and its ClientHello carries one key
 * share, while still getting the post-quantum hybrid from a broker that
 * prefers it.
 */
import { randomBytes } from "node:crypto";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { createServer as createTlsServer, type TLSSocket, connect as tlsConnect } from "node:tls";
import { connectAsync } from "mqtt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { tlsOptions } from "../../agent/transport/mqtt-connection.js";
import { MqttSession } from "../../agent/transport/mqtt-session.js";
import { type CountingProxy, startCountingProxy } from "../support/counting-proxy.js";
import { type MosquittoFixture, startMosquitto } from "../support/mosquitto.js";
import { waitFor } from "../support/wait-for.js";

let broker: MosquittoFixture;
let proxy: CountingProxy;
let dir: string;
const cleanups: (() => unknown)[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "fleetlet-tls-reconnect-"));
  // Each device may write only its own topics, by the identity in its certificate: a resumed session must keep it.
  const aclFile = join(dir, "acl");
  writeFileSync(aclFile, "pattern readwrite fleet/devices/%u/#\nuser operator\ntopic read fleet/#\n");
  broker = await startMosquitto({ tls: true, clientCerts: true, aclFile });
  proxy = await startCountingProxy({ host: "127.0.0.1", port: broker.port });
});
afterAll(async () => {
  for (const undo of cleanups.reverse()) await undo();
  await proxy?.stop();
  await broker?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** A session through the counting proxy, with its client certificate in files of its own (so a test can rotate them). */
async function tlsSession(deviceId: string) {
  const cert = join(dir, `${deviceId}.crt`);
  const key = join(dir, `${deviceId}.key`);
  const issued = broker.clientCert(deviceId);
  copyFileSync(issued.cert, cert);
  copyFileSync(issued.key, key);
  const logs: string[] = [];
  const s = new MqttSession({
    deviceId,
    groups: [],
    onDesired: () => undefined,
    onConnectionChange: () => undefined,
    agentVersion: "9.9.9-test",
    log: (line) => logs.push(line),
    mqtt: { url: `mqtts://${proxy.host}`, prefix: "fleet", ca: broker.caFile, cert, key },
  });
  cleanups.push(() => s.stop());
  await s.start();
  await delay(300); // the broker's session tickets follow its handshake
  return { s, logs, cert, key };
}

/** Cuts the link, waits for the session to connect again, and returns the bytes each way and the connect's log line. */
async function reconnect(logs: string[]) {
  const at = Date.now();
  const mark = logs.length;
  const conns = proxy.connections();
  proxy.reset();
  proxy.dropConnections();
  const line = await waitFor("the reconnection", () => logs.slice(mark).find((l) => l.startsWith("connected to")), {
    timeoutMs: 30_000,
  });
  expect(proxy.connections()).toBeGreaterThan(conns);
  await delay(300);
  return { line, at, up: proxy.bytesUp(), down: proxy.bytesDown() };
}

/** The retained status of `deviceId`, as the operator (by its own certificate) reads it. */
async function retainedStatus(deviceId: string): Promise<Record<string, unknown>> {
  const cert = broker.clientCert("operator");
  const op = await connectAsync(broker.url, {
    clientId: `op-${randomBytes(3).toString("hex")}`,
    protocolVersion: 5,
    reconnectPeriod: 0,
    ca: readFileSync(broker.caFile),
    cert: readFileSync(cert.cert),
    key: readFileSync(cert.key),
  });
  try {
    const got = new Promise<Buffer>((r) => op.once("message", (_t, payload) => r(payload)));
    await op.subscribeAsync(`fleet/devices/${deviceId}/status`, { qos: 1 });
    return JSON.parse((await got).toString());
  } finally {
    await op.endAsync(true);
  }
}

describe("a reconnect over TLS with a client certificate", () => {
  it("resumes the TLS session: no certificates cross, about half the bytes of a full handshake", async () => {
    const deviceId = `dev-${randomBytes(3).toString("hex")}`;
    const { logs } = await tlsSession(deviceId);
    expect(logs.find((l) => l.startsWith("connected to"))).not.toContain("TLS resumed");
    const first = { up: proxy.bytesUp(), down: proxy.bytesDown() };
    const again = await reconnect(logs);
    expect(again.line).toContain("TLS resumed");
    // A full handshake here sends the broker's certificate and two tickets down (about 2.6 KB); a resumed one, one ticket.
    expect(again.down).toBeLessThan(first.down - 1000);
    expect(again.up + again.down).toBeLessThan(first.up + first.down);
    const third = await reconnect(logs);
    expect(third.line).toContain("TLS resumed");
    // The broker still knows the device by its certificate: the status it publishes at each connect is let through.
    const status = await retainedStatus(deviceId);
    expect(status).toMatchObject({ online: true, deviceId });
    expect(Date.parse(String(status.ts))).toBeGreaterThan(third.at);
  });

  it("makes a full handshake, and checks everything again, once the client certificate is replaced on disk", async () => {
    const deviceId = `dev-${randomBytes(3).toString("hex")}`;
    const { logs, cert, key } = await tlsSession(deviceId);
    expect((await reconnect(logs)).line).toContain("TLS resumed");
    const renewed = broker.clientCert(`${deviceId}-renewed`);
    copyFileSync(renewed.cert, cert);
    copyFileSync(renewed.key, key);
    const full = await reconnect(logs);
    expect(full.line).not.toContain("TLS resumed");
    // The renewed certificate's own ticket is resumed from then on.
    expect((await reconnect(logs)).line).toContain("TLS resumed");
  });
});

describe("a reconnect to a restarted broker", () => {
  it("offers a ticket the broker no longer knows, and connects by a full handshake", async () => {
    const deviceId = `dev-${randomBytes(3).toString("hex")}`;
    const { s, logs } = await tlsSession(deviceId);
    expect((await reconnect(logs)).line).toContain("TLS resumed");
    const mark = logs.length;
    await broker.restart(); // new ticket keys: the saved ticket is worthless now
    const line = await waitFor(
      "the reconnection to the restarted broker",
      () => logs.slice(mark).find((l) => l.startsWith("connected to")),
      { timeoutMs: 60_000 },
    );
    expect(line).not.toContain("TLS resumed");
    expect(s.connected).toBe(true);
    await delay(300);
    expect((await reconnect(logs)).line).toContain("TLS resumed");
  });
});

describe("the TLS groups the session offers", () => {
  it("sends one key share (X25519) in its ClientHello, not Node's default 1.2 KB post-quantum share as well", async () => {
    const hello = await firstFlight(tlsOptions({ url: "mqtts://127.0.0.1", prefix: "fleet", ca: broker.caFile }));
    const defaults = await firstFlight({ ca: readFileSync(broker.caFile) });
    expect(defaults - hello).toBeGreaterThan(1100);
    expect(hello).toBeLessThan(700);
  });

  it("still agrees on X25519MLKEM768 with a broker that prefers it", async () => {
    const ca = broker.caFile;
    const issued = broker.clientCert("pq-server");
    const pq = createTlsServer({ key: readFileSync(issued.key), cert: readFileSync(issued.cert) }, (s) => s.end());
    await new Promise<void>((r) => pq.listen(0, "127.0.0.1", r));
    cleanups.push(() => pq.close());
    const port = (pq.address() as { port: number }).port;
    const socket: TLSSocket = tlsConnect({
      host: "127.0.0.1",
      port,
      servername: "pq-server",
      ...tlsOptions({ url: "mqtts://127.0.0.1", prefix: "fleet", ca }),
      rejectUnauthorized: false, // a client certificate serving as the server's: only the key exchange is under test
    });
    await new Promise((resolve, reject) => socket.once("secureConnect", resolve).once("error", reject));
    expect(socket.getEphemeralKeyInfo()).toMatchObject({ name: "X25519MLKEM768" });
    socket.destroy();
  });
});

/** The size of the first flight a TLS client with `options` sends (its ClientHello), caught by a plain TCP server. */
async function firstFlight(options: object): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const got = new Promise<number>((resolve) =>
    server.once("connection", (c) => {
      c.once("data", (chunk: Buffer) => {
        resolve(chunk.length);
        c.destroy();
      });
    }),
  );
  const socket = tlsConnect({ host: "127.0.0.1", port: (server.address() as { port: number }).port, ...options });
  socket.on("error", () => undefined); // the server hangs up on the ClientHello: expected
  try {
    return await got;
  } finally {
    socket.destroy();
    server.close();
  }
}
