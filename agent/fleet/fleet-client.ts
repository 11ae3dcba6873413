/**
 * The operator side's MQTT connection (fleetctl): MQTT 5, a clean session
 * with a unique client id, QoS 1 publishes that resolve only when the broker
 * acknowledged them, and a fence that tells when the retained messages of a
 * subscription have all arrived.
 */
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { connect, type IPublishPacket, type MqttClient } from "mqtt";
import { FleetError } from "../errors.js";
import { type TopicNames, topicNames } from "../protocol/topics.js";
import { sendAtOnce } from "../transport/mqtt-connection.js";
import { describeFailure, displayUrl, type MqttSettings, tlsOptions } from "../transport/mqtt-session.js";

export type { MqttSettings };
export type MessageHandler = (topic: string, payload: Buffer, packet: IPublishPacket) => void;

const CONNECT_TIMEOUT_MS = 10_000;
/** Long enough for the retained state of tens of thousands of devices to arrive. */
const FENCE_TIMEOUT_MS = 60_000;

export class FleetClient {
  readonly topics: TopicNames;
  private readonly handlers = new Set<MessageHandler>();
  private readonly fenceTopic: string;
  private fences = new Map<string, () => void>();

  private constructor(
    private readonly client: MqttClient,
    prefix: string,
  ) {
    this.topics = topicNames(prefix);
    this.fenceTopic = this.topics.operatorFence(client.options.clientId ?? "");
    client.on("message", (topic, payload, packet) => {
      if (topic === this.fenceTopic) {
        const id = payload.toString();
        this.fences.get(id)?.();
        this.fences.delete(id);
        return;
      }
      for (const h of this.handlers) h(topic, payload, packet);
    });
  }

  /** Connects, or throws a FleetError that says what to check. */
  static async connect(mqtt: MqttSettings | undefined, opts: { clientId?: string } = {}): Promise<FleetClient> {
    if (!mqtt)
      throw new FleetError(
        "E_INVALID_CONFIG",
        "mqtt: the config has no mqtt section; fleetctl needs it to reach the broker (see --config)",
        { exitCode: 2 },
      );
    const clientId =
      opts.clientId ?? `fleetctl-${hostname().replace(/[^a-zA-Z0-9_.-]/g, "_")}-${randomBytes(4).toString("hex")}`;
    const client = connect(mqtt.url, {
      protocolVersion: 5,
      clientId,
      clean: true,
      reconnectPeriod: 1000,
      connectTimeout: CONNECT_TIMEOUT_MS,
      ...(mqtt.username ? { username: mqtt.username } : {}),
      ...(mqtt.password ? { password: mqtt.password } : {}),
      ...tlsOptions(mqtt),
    });
    sendAtOnce(client.stream);
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`no answer within ${CONNECT_TIMEOUT_MS} ms`)),
          CONNECT_TIMEOUT_MS,
        );
        client.once("connect", () => {
          clearTimeout(timer);
          resolve();
        });
        client.once("error", (err) => {
          clearTimeout(timer);
          reject(err);
        });
      });
    } catch (err) {
      client.end(true);
      throw new FleetError("E_BROKER", describeFailure(mqtt, err as Error).message);
    }
    client.on("error", (err) =>
      process.stderr.write(`fleetctl: MQTT broker ${displayUrl(mqtt.url)}: ${err.message}\n`),
    );
    const fc = new FleetClient(client, mqtt.prefix);
    await fc.subscribe([fc.fenceTopic]);
    return fc;
  }

  onMessage(handler: MessageHandler): () => void {
    this.handlers.add(handler);
    return () => this.handlers.delete(handler);
  }

  async subscribe(filters: string[]): Promise<void> {
    const granted = await this.client.subscribeAsync(filters, { qos: 1 });
    const refused = granted.filter((g) => g.qos > 2);
    if (refused.length)
      throw new FleetError(
        "E_FORBIDDEN",
        `the broker refused the subscription to ${refused.map((g) => g.topic).join(", ")} (reason ${refused[0]!.qos}); check the ACL for this operator`,
      );
  }

  async unsubscribe(filters: string[]): Promise<void> {
    await this.client.unsubscribeAsync(filters);
  }

  /** Resolves once every message the broker queued for us before this call has been handled (retained ones included). */
  async fence(timeoutMs = FENCE_TIMEOUT_MS): Promise<void> {
    const id = randomBytes(8).toString("hex");
    let timer: NodeJS.Timeout | undefined;
    const seen = new Promise<void>((resolve, reject) => {
      this.fences.set(id, resolve);
      timer = setTimeout(() => {
        this.fences.delete(id);
        reject(
          new FleetError(
            "E_BROKER",
            `the broker did not echo fleetctl's own message within ${timeoutMs / 1000} s; it may be dropping messages queued for this client (mosquitto: raise max_queued_messages to at least twice the number of devices)`,
          ),
        );
      }, timeoutMs);
    });
    try {
      await this.client.publishAsync(this.fenceTopic, id, { qos: 1 });
      await seen;
    } finally {
      clearTimeout(timer);
    }
  }

  /** The retained message on `topic`, if any. */
  async retained(topic: string): Promise<Buffer | undefined> {
    let found: Buffer | undefined;
    const off = this.onMessage((t, payload) => {
      if (t === topic && payload.length) found = payload;
    });
    try {
      await this.subscribe([topic]);
      await this.fence();
      await this.unsubscribe([topic]);
    } finally {
      off();
    }
    return found;
  }

  /** Publishes with QoS 1 and waits for the broker's acknowledgement; a refusal (MQTT 5 reason code) throws. */
  async publish(topic: string, payload: string | Buffer, opts: { retain: boolean }): Promise<void> {
    const packet = await this.client.publishAsync(topic, payload, { qos: 1, retain: opts.retain });
    const reason = (packet as { reasonCode?: number } | undefined)?.reasonCode ?? 0;
    // 16 is "no matching subscribers": accepted all the same.
    if (reason >= 0x80)
      throw new FleetError(
        "E_FORBIDDEN",
        `the broker refused the publish to ${topic} (reason ${reason}${reason === 135 ? ": not authorized" : ""}); check the ACL for this operator`,
      );
  }

  async close(): Promise<void> {
    await this.client.endAsync();
  }
}
