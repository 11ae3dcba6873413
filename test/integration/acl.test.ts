/**
 * The ACL that `fleetctl acl` renders, enforced by a real mosquitto 2 over
 * mTLS (the client certificate's CN is the username): devices dev-a (group
 * pilot) and dev-b (group other), operator `operator`, MQTT 5 clients. Then
 * the example broker config in deploy/mosquitto/, booted with only its paths
 * and port changed.
 *
 * A message that must not arrive is checked with a fence: a message that must
 * arrive, queued by the broker after it (each publish is awaited to its
 * PUBACK, and mosquitto queues a message to its subscribers before it sends
 * that PUBACK). Once the fence is in, anything queued before it would be too.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { connect, type IClientOptions, type IConnackPacket, type IDisconnectPacket, type MqttClient } from "mqtt";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { parseInventory, renderAcl } from "../../agent/fleet/acl.js";
import type { Inventory } from "../../schemas/inventory.js";
import { type BrokerFiles, type MosquittoFixture, startMosquitto } from "../support/mosquitto.js";
import { waitFor } from "../support/wait-for.js";

const INVENTORY: Inventory = { devices: { "dev-a": ["pilot"], "dev-b": ["other"] }, operators: ["operator"] };
const NOT_AUTHORIZED = 135;
const PACKET_TOO_LARGE = 149;
/** max_packet_size in deploy/mosquitto/mosquitto.conf. */
const MAX_PACKET_SIZE = 262_144;

interface Received {
  topic: string;
  text: string;
  retain: boolean;
}

interface TestClient {
  mqtt: MqttClient;
  connack: IConnackPacket;
  received: Received[];
  /** What arrived on `topic`, as text. */
  texts(topic: string): string[];
}

const open: MqttClient[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((c) => c.endAsync(true)));
});

const unique = (what: string) => `${what}-${randomBytes(4).toString("hex")}`;

/** Connects to `broker` as `cn` (a client certificate with that CN), MQTT 5, no automatic reconnect. */
function clientFor(broker: MosquittoFixture) {
  const certs = new Map<string, { cert: Buffer; key: Buffer }>();
  const ca = readFileSync(broker.caFile);
  return async (cn: string | undefined, opts: Partial<IClientOptions> = {}): Promise<TestClient> => {
    let tls = cn === undefined ? undefined : certs.get(cn);
    if (cn !== undefined && !tls) {
      const files = broker.clientCert(cn);
      tls = { cert: readFileSync(files.cert), key: readFileSync(files.key) };
      certs.set(cn, tls);
    }
    const mqtt = connect(broker.url, {
      protocolVersion: 5,
      clientId: unique(cn ?? "nobody"),
      reconnectPeriod: 0,
      connectTimeout: 10_000,
      ca,
      ...tls,
      ...opts,
    });
    open.push(mqtt);
    const connack = await new Promise<IConnackPacket>((resolve, reject) => {
      mqtt.once("connect", resolve);
      mqtt.once("error", reject);
      mqtt.once("close", () =>
        reject(new Error(`the broker closed the connection of ${cn ?? "a client without a certificate"}`)),
      );
    });
    const received: Received[] = [];
    mqtt.on("message", (topic, payload, packet) =>
      received.push({ topic, text: payload.toString(), retain: packet.retain }),
    );
    return { mqtt, connack, received, texts: (topic) => received.filter((m) => m.topic === topic).map((m) => m.text) };
  };
}

/** The PUBACK reason code mosquitto answers a QoS 1 publish with (0 when accepted). */
async function pubackCode(c: TestClient, topic: string, text: string, retain = false): Promise<number> {
  try {
    const packet = await c.mqtt.publishAsync(topic, text, { qos: 1, retain });
    return (packet as { reasonCode?: number } | undefined)?.reasonCode ?? 0;
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (typeof code === "number") return code;
    throw err;
  }
}

describe("the rendered ACL on mosquitto with client certificates", () => {
  let broker: MosquittoFixture;
  let dir: string;
  let aclFile: string;
  let as: ReturnType<typeof clientFor>;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "fleetlet-acl-"));
    aclFile = join(dir, "acl");
    writeFileSync(aclFile, renderAcl(INVENTORY));
    broker = await startMosquitto({ clientCerts: true, aclFile });
    as = clientFor(broker);
  });
  afterAll(async () => {
    await broker?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("lets a device publish its own reported state, status and events", async () => {
    const op = await as("operator");
    await op.mqtt.subscribeAsync("fleet/devices/dev-a/+", { qos: 1 });
    const a = await as("dev-a");
    const sent: [string, string, boolean][] = [
      ["fleet/devices/dev-a/reported", unique("reported"), true],
      ["fleet/devices/dev-a/status", unique("status"), true],
      ["fleet/devices/dev-a/events", unique("event"), false],
    ];
    for (const [topic, text, retain] of sent) expect(await pubackCode(a, topic, text, retain)).toBe(0);
    for (const [topic, text] of sent) await waitFor(`${text} on ${topic}`, () => op.texts(topic).includes(text));
  });

  it("refuses dev-a's publish of dev-b's reported state with PUBACK 135: no subscriber gets it and nothing is retained", async () => {
    const op = await as("operator");
    await op.mqtt.subscribeAsync("fleet/devices/+/reported", { qos: 1 });
    const a = await as("dev-a");
    const forged = unique("forged");
    expect(await pubackCode(a, "fleet/devices/dev-b/reported", forged, true)).toBe(NOT_AUTHORIZED);
    expect(a.mqtt.connected).toBe(true); // a refused publish does not cost the connection

    const fence = unique("fence");
    expect(await pubackCode(a, "fleet/devices/dev-a/reported", fence)).toBe(0);
    await waitFor("the fence", () => op.texts("fleet/devices/dev-a/reported").includes(fence));
    expect(op.texts("fleet/devices/dev-b/reported")).not.toContain(forged);

    const late = await as("operator");
    await late.mqtt.subscribeAsync("fleet/devices/dev-b/reported", { qos: 1 });
    await late.mqtt.subscribeAsync("fleet/devices/dev-a/reported", { qos: 1 }); // its retained message is the fence
    await waitFor("dev-a's retained reported state", () => late.texts("fleet/devices/dev-a/reported").length > 0);
    expect(late.texts("fleet/devices/dev-b/reported")).not.toContain(forged);
  });

  it.each([
    "fleet/devices/dev-a/desired",
    "fleet/devices/dev-b/desired",
    "fleet/groups/pilot/desired",
    "fleet/groups/other/desired",
    "fleet/groups/pilot/rollout",
    "fleet/devices/dev-b/status",
    "fleet/devices/dev-b/events",
  ])("refuses dev-a's publish on %s with PUBACK 135, and no subscriber gets it", async (topic) => {
    const op = await as("operator");
    await op.mqtt.subscribeAsync("fleet/#", { qos: 1 });
    const a = await as("dev-a");
    const forged = unique("forged");
    expect(await pubackCode(a, topic, forged, true)).toBe(NOT_AUTHORIZED);
    const fence = unique("fence");
    expect(await pubackCode(a, "fleet/devices/dev-a/events", fence)).toBe(0);
    await waitFor("the fence", () => op.texts("fleet/devices/dev-a/events").includes(fence));
    expect(op.received.filter((m) => m.text === forged)).toEqual([]);
  });

  it("delivers dev-a its own desired state and its group's, retained and live, but not dev-b's nor group other's", async () => {
    const op = await as("operator");
    const docs = Object.fromEntries(
      [
        "fleet/devices/dev-a/desired",
        "fleet/groups/pilot/desired",
        "fleet/devices/dev-b/desired",
        "fleet/groups/other/desired",
      ].map((t) => [t, unique("desired")]),
    );
    for (const [topic, text] of Object.entries(docs)) expect(await pubackCode(op, topic, text, true)).toBe(0);

    const a = await as("dev-a");
    // mosquitto 2.0's acl_file grants every SUBSCRIBE, wildcards included; it filters each message at delivery.
    const foreign = await a.mqtt.subscribeAsync(
      ["fleet/devices/dev-b/desired", "fleet/groups/other/desired", "fleet/#"],
      { qos: 1 },
    );
    expect(foreign.map((g) => g.qos)).toEqual([1, 1, 1]);
    const own = await a.mqtt.subscribeAsync(["fleet/devices/dev-a/desired", "fleet/groups/pilot/desired"], { qos: 1 });
    expect(own.map((g) => g.qos)).toEqual([1, 1]);
    await waitFor(
      "dev-a's retained desired documents",
      () => a.texts("fleet/devices/dev-a/desired").length > 0 && a.texts("fleet/groups/pilot/desired").length > 0,
    );
    expect(a.texts("fleet/devices/dev-a/desired")).toContain(docs["fleet/devices/dev-a/desired"]);
    expect(a.texts("fleet/groups/pilot/desired")).toContain(docs["fleet/groups/pilot/desired"]);
    expect(a.received.every((m) => m.retain)).toBe(true);

    const live = { dev: unique("live"), pilot: unique("live"), devB: unique("live"), other: unique("live") };
    expect(await pubackCode(op, "fleet/devices/dev-b/desired", live.devB)).toBe(0);
    expect(await pubackCode(op, "fleet/groups/other/desired", live.other)).toBe(0);
    expect(await pubackCode(op, "fleet/devices/dev-a/desired", live.dev)).toBe(0);
    expect(await pubackCode(op, "fleet/groups/pilot/desired", live.pilot)).toBe(0);
    await waitFor(
      "the live documents for dev-a and pilot",
      () =>
        a.texts("fleet/devices/dev-a/desired").includes(live.dev) &&
        a.texts("fleet/groups/pilot/desired").includes(live.pilot),
    );
    expect(new Set(a.received.map((m) => m.topic))).toEqual(
      new Set(["fleet/devices/dev-a/desired", "fleet/groups/pilot/desired"]),
    );
  });

  it("publishes a device's last will on its own status topic, and drops a will aimed at another device's", async () => {
    const op = await as("operator");
    await op.mqtt.subscribeAsync("fleet/devices/+/status", { qos: 1 });
    const forgedWill = unique("forged-will");
    const forgerId = unique("dev-a-forger");
    const forger = await as("dev-a", {
      clientId: forgerId,
      will: { topic: "fleet/devices/dev-b/status", payload: Buffer.from(forgedWill), qos: 1, retain: true },
    });
    const ownWill = unique("own-will");
    const a = await as("dev-a", {
      will: { topic: "fleet/devices/dev-a/status", payload: Buffer.from(ownWill), qos: 1, retain: true },
    });

    forger.mqtt.stream.destroy();
    // Its CONNACK means the broker is done with the old connection of that client id, will included.
    await as("dev-a", { clientId: forgerId });
    a.mqtt.stream.destroy();
    await waitFor("dev-a's will", () => op.texts("fleet/devices/dev-a/status").includes(ownWill));
    expect(op.received.filter((m) => m.text === forgedWill)).toEqual([]);

    const late = await as("operator");
    await late.mqtt.subscribeAsync("fleet/devices/dev-b/status", { qos: 1 });
    await late.mqtt.subscribeAsync("fleet/devices/dev-a/status", { qos: 1 });
    await waitFor("dev-a's retained will", () => late.texts("fleet/devices/dev-a/status").includes(ownWill));
    expect(late.texts("fleet/devices/dev-b/status")).not.toContain(forgedWill);
  });

  it("follows the certificate, not the client id: dev-b taking dev-a's client id knocks dev-a off but gets none of its rights", async () => {
    const op = await as("operator");
    const desiredForA = unique("desired");
    expect(await pubackCode(op, "fleet/devices/dev-a/desired", desiredForA, true)).toBe(0);
    const desiredForB = unique("desired");
    expect(await pubackCode(op, "fleet/devices/dev-b/desired", desiredForB, true)).toBe(0);

    const a = await as("dev-a", { clientId: "dev-a" });
    const kicked = new Promise<void>((resolve) => a.mqtt.once("close", () => resolve())); // mosquitto 2.0 just closes it, with no DISCONNECT (142, session taken over)
    const impostor = await as("dev-b", { clientId: "dev-a" });
    await kicked;

    expect(await pubackCode(impostor, "fleet/devices/dev-a/reported", unique("forged"))).toBe(NOT_AUTHORIZED);
    await impostor.mqtt.subscribeAsync("fleet/devices/dev-a/desired", { qos: 1 });
    await impostor.mqtt.subscribeAsync("fleet/devices/dev-b/desired", { qos: 1 });
    await waitFor("dev-b's own retained desired state", () =>
      impostor.texts("fleet/devices/dev-b/desired").includes(desiredForB),
    );
    expect(impostor.texts("fleet/devices/dev-a/desired")).toEqual([]);
  });

  it("lets the operator publish desired state and rollout progress", async () => {
    const op = await as("operator");
    const writes = [
      "fleet/devices/dev-a/desired",
      "fleet/devices/dev-b/desired",
      "fleet/groups/pilot/desired",
      "fleet/groups/other/desired",
      "fleet/groups/pilot/rollout",
    ];
    const texts = writes.map(() => unique("op"));
    for (const [i, topic] of writes.entries()) expect(await pubackCode(op, topic, texts[i]!, true)).toBe(0);
    const reader = await as("operator");
    await reader.mqtt.subscribeAsync(writes, { qos: 1 });
    for (const [i, topic] of writes.entries())
      await waitFor(`the retained message on ${topic}`, () => reader.texts(topic).includes(texts[i]!));
  });

  it("refuses the operator's publish of reported state, status or events, for a device or under its own name", async () => {
    const op = await as("operator");
    for (const topic of [
      "fleet/devices/dev-a/reported",
      "fleet/devices/dev-a/status",
      "fleet/devices/dev-b/events",
      "fleet/devices/operator/reported",
      "fleet/devices/operator/status",
    ]) {
      expect([topic, await pubackCode(op, topic, unique("forged"), true)]).toEqual([topic, NOT_AUTHORIZED]);
    }
  });

  it("lets operators read reported state through an MQTT 5 shared subscription, each message to one of them; a device's shared subscription gets nothing", async () => {
    const ops = [await as("operator"), await as("operator")];
    for (const op of ops)
      expect(
        (await op.mqtt.subscribeAsync("$share/status/fleet/devices/+/reported", { qos: 1 })).map((g) => g.qos),
      ).toEqual([1]);
    const spy = await as("dev-a");
    expect(
      (await spy.mqtt.subscribeAsync("$share/spy/fleet/devices/+/reported", { qos: 1 })).map((g) => g.qos),
    ).toEqual([1]);
    await spy.mqtt.subscribeAsync("fleet/devices/dev-a/desired", { qos: 1 }); // for the fence

    const a = await as("dev-a");
    const b = await as("dev-b");
    const sent: string[] = [];
    for (let i = 0; i < 10; i++) {
      for (const [c, id] of [
        [a, "dev-a"],
        [b, "dev-b"],
      ] as const) {
        const text = unique(`shared-${id}`);
        sent.push(text);
        expect(await pubackCode(c, `fleet/devices/${id}/reported`, text)).toBe(0);
      }
    }
    const got = () => ops.flatMap((op) => op.received.map((m) => m.text)).filter((t) => sent.includes(t));
    await waitFor("every report at one operator", () => got().length >= sent.length);
    expect(got().sort()).toEqual([...sent].sort()); // each exactly once across the two
    expect(ops.map((op) => op.received.length > 0)).toEqual([true, true]); // and shared between them

    const fence = unique("fence");
    expect(await pubackCode(ops[0]!, "fleet/devices/dev-a/desired", fence)).toBe(0);
    await waitFor("the fence", () => spy.texts("fleet/devices/dev-a/desired").includes(fence));
    expect(spy.received.filter((m) => m.topic.endsWith("/reported"))).toEqual([]);
  });

  it("refuses a client without a certificate in the TLS handshake", async () => {
    await expect(as(undefined)).rejects.toMatchObject({ code: "ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED" });
  });

  it("gives an unlisted device its own topics at once, and its groups after the ACL is regenerated and mosquitto reloaded", async () => {
    const op = await as("operator");
    const pilotDoc = unique("pilot");
    expect(await pubackCode(op, "fleet/groups/pilot/desired", pilotDoc, true)).toBe(0);
    const ownDoc = unique("dev-c");
    expect(await pubackCode(op, "fleet/devices/dev-c/desired", ownDoc, true)).toBe(0);

    const c = await as("dev-c");
    expect(await pubackCode(c, "fleet/devices/dev-c/reported", unique("reported"))).toBe(0);
    expect(await pubackCode(c, "fleet/devices/dev-a/reported", unique("forged"))).toBe(NOT_AUTHORIZED);
    await c.mqtt.subscribeAsync("fleet/groups/pilot/desired", { qos: 1 });
    await c.mqtt.subscribeAsync("fleet/devices/dev-c/desired", { qos: 1 });
    await waitFor("dev-c's own retained desired state", () => c.texts("fleet/devices/dev-c/desired").includes(ownDoc));
    expect(c.texts("fleet/groups/pilot/desired")).toEqual([]);

    writeFileSync(aclFile, renderAcl({ ...INVENTORY, devices: { ...INVENTORY.devices, "dev-c": ["pilot"] } }));
    broker.reload();
    // The same connection gains the group: mosquitto reapplies the ACL to connected clients. Resubscribe until the retained doc comes.
    await waitFor("the pilot group's retained desired state after the reload", () => {
      if (c.texts("fleet/groups/pilot/desired").includes(pilotDoc)) return true;
      c.mqtt.unsubscribe("fleet/groups/pilot/desired", () =>
        c.mqtt.subscribe("fleet/groups/pilot/desired", { qos: 1 }),
      );
      return false;
    });
    expect(await pubackCode(c, "fleet/groups/pilot/desired", unique("forged"))).toBe(NOT_AUTHORIZED);
  });
});

const SHIPPED_CONFIG = fileURLToPath(new URL("../../deploy/mosquitto/mosquitto.conf", import.meta.url));
const EXAMPLE_INVENTORY = fileURLToPath(new URL("../../deploy/mosquitto/inventory.example.json", import.meta.url));

/** deploy/mosquitto/mosquitto.conf with the fixture's port, files and temp dir; every line replaced must be there. */
function shippedConfig(files: BrokerFiles, aclFile: string): string {
  let text = readFileSync(SHIPPED_CONFIG, "utf8");
  const swaps: [RegExp, string][] = [
    [/^listener 8883$/m, `listener ${files.port} 127.0.0.1`],
    [/^cafile \/etc\/mosquitto\/fleetlet\/ca\.crt$/m, `cafile ${files.cafile}`],
    [/^certfile \/etc\/mosquitto\/fleetlet\/broker\.crt$/m, `certfile ${files.certfile}`],
    [/^keyfile \/etc\/mosquitto\/fleetlet\/broker\.key$/m, `keyfile ${files.keyfile}`],
    [/^acl_file \/etc\/mosquitto\/fleetlet\/acl$/m, `acl_file ${aclFile}`],
    [/^persistence_location \/var\/lib\/mosquitto\/$/m, `persistence_location ${files.dir}/`],
  ];
  for (const [line, replacement] of swaps) {
    if (!line.test(text)) throw new Error(`${SHIPPED_CONFIG} has no line matching ${line}`);
    text = text.replace(line, replacement);
  }
  // Test only: the fixture's files sit in a 0700 temp dir that the mosquitto user could not read.
  return `${text}\nuser root\n`;
}

describe("deploy/mosquitto/mosquitto.conf with the ACL of inventory.example.json", () => {
  let broker: MosquittoFixture;
  let dir: string;
  let as: ReturnType<typeof clientFor>;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "fleetlet-shipped-conf-"));
    const aclFile = join(dir, "acl");
    writeFileSync(aclFile, renderAcl(parseInventory(JSON.parse(readFileSync(EXAMPLE_INVENTORY, "utf8")))));
    broker = await startMosquitto({ clientCerts: true, config: (files) => shippedConfig(files, aclFile) });
    as = clientFor(broker);
  });
  afterAll(async () => {
    await broker?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("takes certificate identities with allow_anonymous false, refuses a client without a certificate, and enforces the ACL", async () => {
    const dev = await as("dev-001");
    expect(await pubackCode(dev, "fleet/devices/dev-001/reported", unique("reported"), true)).toBe(0);
    expect(await pubackCode(dev, "fleet/groups/pilot/desired", unique("forged"), true)).toBe(NOT_AUTHORIZED);
    expect(await pubackCode(dev, "fleet/devices/dev-002/reported", unique("forged"), true)).toBe(NOT_AUTHORIZED);
    await expect(as(undefined)).rejects.toMatchObject({ code: "ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED" });
  });

  it("tells MQTT 5 clients its 256 KiB packet limit and disconnects a client that sends more (DISCONNECT 149); the message goes nowhere", async () => {
    const op = await as("operator");
    await op.mqtt.subscribeAsync("fleet/devices/dev-001/events", { qos: 1 });
    const dev = await as("dev-001");
    expect(dev.connack.properties?.maximumPacketSize).toBe(MAX_PACKET_SIZE);
    const disconnect = new Promise<IDisconnectPacket>((resolve) => dev.mqtt.once("disconnect", resolve));
    const closed = new Promise<void>((resolve) => dev.mqtt.once("close", () => resolve()));
    dev.mqtt.publish("fleet/devices/dev-001/events", "x".repeat(MAX_PACKET_SIZE), { qos: 1 });
    expect((await disconnect).reasonCode).toBe(PACKET_TOO_LARGE);
    await closed;

    const again = await as("dev-001");
    const fence = "y".repeat(MAX_PACKET_SIZE - 1024); // room for the fixed header, topic and properties
    expect(await pubackCode(again, "fleet/devices/dev-001/events", fence)).toBe(0);
    await waitFor("a publish just under the limit", () => op.texts("fleet/devices/dev-001/events").includes(fence));
    expect(op.received).toHaveLength(1);
  });

  it("tells an MQTT 5 client asking for a 10-minute keepalive to use 240 s", async () => {
    const dev = await as("dev-002", { keepalive: 600 });
    expect(dev.connack.properties?.serverKeepAlive).toBe(240);
  });

  it("keeps retained desired state across a broker restart (persistence)", async () => {
    const op = await as("operator");
    const doc = unique("desired");
    expect(await pubackCode(op, "fleet/devices/dev-003/desired", doc, true)).toBe(0);
    await broker.restart();
    const dev = await as("dev-003");
    await dev.mqtt.subscribeAsync("fleet/devices/dev-003/desired", { qos: 1 });
    await waitFor("the desired state published before the restart", () =>
      dev.texts("fleet/devices/dev-003/desired").includes(doc),
    );
  });
});
