/**
 * The agent's MQTT session (docs/contract.md, "MQTT topics"): one persistent session
 * per device (clientId = deviceId, clean: false), QoS 1 throughout, a retained
 * status with a last will, the desired-state subscriptions, and reported and
 * event publishing that cannot flood the broker or the agent's memory
 * (publish-pacing.ts). The connection itself, and its reconnects, are
 * reconnecting-client.ts's.
 */
import type { ClientSubscribeCallback, IClientOptions, ISubscriptionMap } from "mqtt";
import { FleetError } from "../errors.js";
import { type DeviceChannel, type TopicNames, topicNames } from "../protocol/topics.js";
import type { MqttSettings } from "./mqtt-connection.js";
import { type DocSource, type EventDoc, EventPacer, ReportedPacer } from "./publish-pacing.js";
import { ReconnectingClient } from "./reconnecting-client.js";

/** fleetctl's client connects the same way (agent/fleet/fleet-client.ts imports these from here). */
export { describeFailure, displayUrl, type MqttSettings, tlsOptions } from "./mqtt-connection.js";

export interface MqttSessionOptions {
  deviceId: string;
  groups: string[];
  mqtt: MqttSettings;
  /** Called for every message on the device's or its groups' desired topics (retained ones included). Empty payloads (cleared retained messages) are passed too. */
  onDesired: (source: { kind: "device" | "group"; name: string }, payload: Buffer) => void;
  onConnectionChange?: (connected: boolean) => void;
  agentVersion: string;
  /** What of a reported doc must change for it to be published again (agent/protocol/reported-change.ts); default: anything. */
  reportedChangeKey?: (doc: object) => string;
  /** How long a change of the reported doc waits for the changes that follow it; default 1000 ms. */
  reportedMinIntervalMs?: number;
  /** Events rate limit: at most this many per second, excess dropped except lifecycle events; default 5. */
  eventsPerSecond?: number;
  /** Where connection trouble is told (one line each, never the password); default stderr. */
  log?: (line: string) => void;
}

export class MqttSession {
  private readonly opts: MqttSessionOptions;
  private readonly log: (line: string) => void;
  private readonly connection: ReconnectingClient;
  private readonly events: EventPacer;
  private readonly reported: ReportedPacer;
  private topics: TopicNames | undefined;
  private desired: string[] = [];
  private started: Promise<void> | undefined;
  private stopped: Promise<void> | undefined;

  constructor(opts: MqttSessionOptions) {
    this.opts = opts;
    this.log = opts.log ?? ((line) => process.stderr.write(`fleetlet: ${line}\n`));
    this.connection = new ReconnectingClient({
      deviceId: opts.deviceId,
      mqtt: opts.mqtt,
      log: this.log,
      will: () => this.will(),
      onConnect: (v5, sessionPresent) => this.onConnect(v5, sessionPresent),
      onConnectionChange: (connected) => this.onConnectionChange(connected),
      onMessage: (topic, payload) => this.onMessage(topic, payload),
    });
    this.events = new EventPacer(opts.eventsPerSecond ?? 5);
    this.reported = new ReportedPacer({
      minIntervalMs: opts.reportedMinIntervalMs ?? 1000,
      ready: () => this.connection.connected,
      publish: (doc) => this.send("reported", doc, true),
      guard: (work) => this.connection.guard(work),
      ...(opts.reportedChangeKey ? { changeKey: opts.reportedChangeKey } : {}),
    });
  }

  get connected(): boolean {
    return this.connection.connected;
  }

  /**
   * Connects. Resolves on the first CONNACK, or after `timeoutMs` without one
   * (the agent must run offline; the session keeps retrying). Rejects with
   * E_INVALID_CONFIG, and gives up, when the options are unusable or the
   * first connection is refused for a reason retrying cannot fix (an
   * untrusted broker certificate, a refused client certificate, bad
   * credentials). Later failures of any kind are logged and retried.
   */
  start(opts: { timeoutMs?: number } = {}): Promise<void> {
    if (this.stopped && !this.started)
      return Promise.reject(
        new FleetError(
          "E_INVALID_ARGUMENT",
          `MQTT session of ${this.opts.deviceId}: start() after stop(); make a new session`,
        ),
      );
    this.started ??= this.connection.connect(opts.timeoutMs, () => {
      this.topics = topicNames(this.opts.mqtt.prefix);
      this.desired = this.desiredTopics(); // checks the device id and group names
    });
    return this.started;
  }

  /**
   * Publishes the latest doc, retained, when it changed (reportedChangeKey)
   * since the doc published last. A change waits reportedMinIntervalMs for
   * the changes that follow it, and the latest doc goes out once; `settled`
   * (an apply reached its outcome) goes out at once. `force` publishes it
   * at once even unchanged (the opt-in heartbeat). Given a function, the
   * doc is built only when it is due.
   */
  publishReported(doc: DocSource, opts: { settled?: boolean; force?: boolean } = {}): void {
    if (this.connection.closed) return;
    this.reported.offer(doc, opts.settled ?? false, opts.force ?? false);
  }

  /** Publishes an event (not retained); a `ts` is added when missing. Progress events beyond the rate, or while offline, are dropped. */
  publishEvent(ev: EventDoc): void {
    if (this.connection.closed) return;
    const doc = this.events.admit(ev, this.connection.connected);
    if (doc) this.send("events", doc, false);
  }

  /** Flushes the pending reported doc, publishes a retained offline status and disconnects (without the will). Idempotent. */
  stop(): Promise<void> {
    this.stopped ??= this.shutdown();
    return this.stopped;
  }

  private async shutdown(): Promise<void> {
    this.reported.cancel();
    await this.connection.stop(() => {
      const acks = [this.sendAcked("status", this.statusDoc(false))];
      const unsent = this.reported.unsent;
      if (unsent) acks.unshift(this.sendAcked("reported", unsent));
      return Promise.all(acks);
    });
  }

  private onConnect(v5: boolean, sessionPresent: boolean): void {
    const desired = this.desired;
    this.send("status", this.statusDoc(true), true);
    // A broker without our session may have lost its retained messages too (restarted without persistence):
    // the reported doc goes out again. With the session, it still holds the one published last.
    if (!sessionPresent) this.reported.republish();
    // With v5, retain handling 1 skips the retained docs when the broker kept the subscription (they were seen already).
    const subscriptions: ISubscriptionMap = Object.fromEntries(
      desired.map((t) => [t, v5 ? { qos: 1, rh: 1 } : { qos: 1 }]),
    );
    this.connection.subscribe(subscriptions, (err, _subs, suback) =>
      this.connection.guard(() => {
        if (err) this.onSubscribeError(err, desired, suback);
      }),
    );
  }

  private onConnectionChange(connected: boolean): void {
    this.opts.onConnectionChange?.(connected);
    if (!connected) return;
    // What happened while offline goes out before the state it led to, so a watcher reads them in that order.
    for (const ev of this.events.takeHeld()) this.send("events", ev, false);
    this.reported.flush();
  }

  private onSubscribeError(err: Error, desired: string[], suback: Parameters<ClientSubscribeCallback>[2]): void {
    // SUBACK codes of 0x80 and up are refusals, one per topic filter in the order asked.
    const refused = desired.filter((_, i) => Number(suback?.granted[i] ?? 0) >= 0x80);
    if (refused.length > 0)
      this.log(
        `${this.connection.broker} refused the subscription to ${refused.join(", ")} (${err.message}); check the broker's ACL for ${this.opts.deviceId}`,
      );
    else
      this.connection.logFailure(
        `${this.connection.broker}: subscribing to ${desired.join(", ")} failed: ${err.message}`,
      );
  }

  private onMessage(topic: string, payload: Buffer): void {
    const parsed = this.topics?.parse(topic);
    if (parsed?.channel !== "desired") return;
    if (parsed.kind === "device" ? parsed.name !== this.opts.deviceId : !this.opts.groups.includes(parsed.name)) return;
    this.opts.onDesired({ kind: parsed.kind, name: parsed.name }, payload);
  }

  private send(channel: DeviceChannel, doc: object, retain: boolean, done?: (err?: Error) => void): void {
    const topic = this.topics!.device(this.opts.deviceId, channel);
    this.connection.publish(topic, JSON.stringify(doc), retain, (err) => {
      if (err) this.connection.logFailure(`${this.connection.broker}: publishing to ${topic} failed: ${err.message}`);
      done?.(err);
    });
  }

  private sendAcked(channel: DeviceChannel, doc: object): Promise<void> {
    return new Promise((resolve, reject) => this.send(channel, doc, true, (err) => (err ? reject(err) : resolve())));
  }

  private desiredTopics(): string[] {
    const topics = this.topics!;
    return [topics.device(this.opts.deviceId, "desired"), ...this.opts.groups.map((g) => topics.groupDesired(g))];
  }

  private statusDoc(online: boolean): object {
    const ts = new Date().toISOString();
    return online
      ? { online, deviceId: this.opts.deviceId, version: this.opts.agentVersion, ts }
      : { online, deviceId: this.opts.deviceId, ts };
  }

  /** The last will, stamped with the time of the connection it belongs to. */
  private will(): NonNullable<IClientOptions["will"]> {
    return {
      topic: this.topics!.device(this.opts.deviceId, "status"),
      payload: Buffer.from(JSON.stringify(this.statusDoc(false))),
      qos: 1,
      retain: true,
    };
  }
}
