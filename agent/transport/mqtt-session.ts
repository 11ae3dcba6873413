/**
 * The agent's MQTT session (docs/contract.md, "MQTT topics"): one persistent session
 * per device (clientId = deviceId, clean: false), QoS 1 throughout, a retained
 * status with a last will, the desired-state subscriptions, and reported and
 * event publishing that cannot flood the broker or the agent's memory.
 *
 * Reconnects are ours, not MQTT.js's: its reconnectPeriod is a fixed interval,
 * and a fleet of devices coming back after a broker outage must not retry in
 * lockstep. So MQTT.js runs with reconnectPeriod 0 and every 'close' schedules
 * one connect() after an exponential, jittered delay.
 */
import { readFileSync } from "node:fs";
import { createSecureContext } from "node:tls";
import {
  type ClientSubscribeCallback,
  connect,
  ErrorWithReasonCode,
  type IClientOptions,
  type IConnackPacket,
  type ISubscriptionMap,
  type MqttClient,
  ReasonCodes,
} from "mqtt";
import { FleetError } from "../errors.js";
import { type DeviceChannel, type TopicNames, topicNames } from "../protocol/topics.js";

export interface MqttSessionOptions {
  deviceId: string;
  groups: string[];
  mqtt: { url: string; ca?: string; cert?: string; key?: string; username?: string; password?: string; prefix: string }; // ca/cert/key are file paths
  /** Called for every message on the device's or its groups' desired topics (retained ones included). Empty payloads (cleared retained messages) are passed too. */
  onDesired: (source: { kind: "device" | "group"; name: string }, payload: Buffer) => void;
  onConnectionChange?: (connected: boolean) => void;
  agentVersion: string;
  /** Min gap between reported publishes while applying; default 1000 ms. */
  reportedMinIntervalMs?: number;
  /** Events rate limit: at most this many per second, excess dropped except lifecycle events; default 5. */
  eventsPerSecond?: number;
  /** Where connection trouble is told (one line each, never the password); default stderr. */
  log?: (line: string) => void;
}

const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 60_000;
/** Only a connection that lasted this long resets the backoff, so a flapping one (a twin taking the session over) keeps backing off. */
const STABLE_CONNECTION_MS = 10_000;
const SESSION_EXPIRY_SECONDS = 86_400;
const CONNECT_TIMEOUT_MS = 15_000;
const KEEPALIVE_SECONDS = 30;
const STOP_TIMEOUT_MS = 5_000;
const OFFLINE_EVENTS_MAX = 100;
/** What a broker without MQTT 5 answers a v5 CONNECT with: 3.1.1's "unacceptable protocol version", v5's "unsupported protocol version". */
const PROTOCOL_REFUSALS = new Set([1, 132]);
/** CONNACK refusals that retrying cannot fix: identifier, credentials, authorisation, ban, auth method. */
const CONFIG_REFUSALS = new Set([2, 4, 5, 133, 134, 135, 138, 140]);

/** Delay before reconnect attempt `attempt` (0-based): exponential, with the upper half jittered. */
export function reconnectDelay(attempt: number, random: () => number = Math.random): number {
  const ceiling = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** attempt);
  return ceiling / 2 + random() * (ceiling / 2);
}

/** Events whose type ends in "progress" are the ones the rate limit may drop; the rest are lifecycle events. */
export function isProgressEvent(type: string): boolean {
  return /progress$/i.test(type);
}

/** The URL as it may appear in a log line: without a password. */
export function displayUrl(url: string): string {
  try {
    const u = new URL(url);
    if (!u.password) return url;
    u.password = "***";
    return u.toString();
  } catch {
    // Not a URL at all: connect() refuses it with its own message, which names it.
    return url;
  }
}

function readPem(field: "ca" | "cert" | "key", path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new FleetError("E_INVALID_CONFIG", `mqtt.${field} ${path}: cannot read it (${why})`, { cause: err });
  }
}

/** The TLS material of the config, read now (files may be rotated on disk between connects) and checked to be usable. */
export function tlsOptions(m: MqttSessionOptions["mqtt"]): Pick<IClientOptions, "ca" | "cert" | "key"> {
  if (!m.ca && !m.cert && !m.key) return {};
  if (!/^(mqtts|wss):/.test(m.url))
    throw new FleetError(
      "E_INVALID_CONFIG",
      `mqtt.url ${displayUrl(m.url)}: mqtt.ca, mqtt.cert or mqtt.key is set but the URL is not TLS; use mqtts:// or wss://`,
    );
  if (Boolean(m.cert) !== Boolean(m.key))
    throw new FleetError(
      "E_INVALID_CONFIG",
      "mqtt.cert and mqtt.key: give both (the client certificate and its private key) or neither",
    );
  const files = {
    ...(m.ca ? { ca: readPem("ca", m.ca) } : {}),
    ...(m.cert && m.key ? { cert: readPem("cert", m.cert), key: readPem("key", m.key) } : {}),
  };
  try {
    createSecureContext(files);
  } catch (err) {
    throw new FleetError(
      "E_INVALID_CONFIG",
      `mqtt.ca/cert/key (${[m.ca, m.cert, m.key].filter(Boolean).join(", ")}): not usable PEM (${(err as Error).message})`,
      { cause: err },
    );
  }
  return files;
}

/** A sentence for a failed connection, and whether retrying could ever help. */
export function describeFailure(m: MqttSessionOptions["mqtt"], err: Error): { message: string; permanent: boolean } {
  const broker = `MQTT broker ${displayUrl(m.url)}`;
  if (err instanceof ErrorWithReasonCode) {
    const permanent = CONFIG_REFUSALS.has(err.code);
    const hint = permanent ? "; check deviceId, mqtt.username, mqtt.password and the client certificate" : "";
    return { message: `${broker} refused the connection: ${err.message} (reason ${err.code})${hint}`, permanent };
  }
  const code = String((err as NodeJS.ErrnoException).code ?? "");
  // An alert from the broker: it refused us (our client certificate), not we it.
  if (/^ERR_SSL_.*ALERT.*(CERTIFICATE|UNKNOWN_CA|ACCESS_DENIED)/.test(code)) {
    return {
      message: `${broker}: TLS: the broker refused the handshake (${code}); check mqtt.cert and mqtt.key (now ${m.cert ?? "none"})`,
      permanent: true,
    };
  }
  if (/CERT|SELF_SIGNED|UNABLE_TO_|ALTNAME/.test(code) || err.message === "TLS not authorized") {
    return {
      message: `${broker}: TLS: the broker's certificate is not trusted (${code || err.message}); set mqtt.ca to the CA that signed it (now ${m.ca ?? "the system CAs"})`,
      permanent: true,
    };
  }
  return { message: `${broker}: ${err.message}`, permanent: false };
}

class TokenBucket {
  private tokens: number;
  private last = Date.now();
  private readonly perSecond: number;

  constructor(perSecond: number) {
    this.perSecond = perSecond;
    this.tokens = perSecond;
  }

  take(): boolean {
    const now = Date.now();
    this.tokens = Math.min(this.perSecond, this.tokens + ((now - this.last) / 1000) * this.perSecond);
    this.last = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

export class MqttSession {
  private readonly opts: MqttSessionOptions;
  private readonly log: (line: string) => void;
  /** "MQTT broker <url>", the subject of every connection message. */
  private readonly broker: string;
  private readonly events: TokenBucket;
  private topics: TopicNames | undefined;
  private client: MqttClient | undefined;
  private started: Promise<void> | undefined;
  private stopped: Promise<void> | undefined;
  private firstConnect: { settle: (err?: Error) => void } | undefined;
  private isConnected = false;
  /** Set by stop() or by a first connection that can never succeed: no more connects or publishes. */
  private closed = false;
  private attempt = 0;
  private connectedAt = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  private retryAtOnce = false;
  private lastFailure = "";
  private pendingReported: object | undefined;
  private reportedTimer: NodeJS.Timeout | undefined;
  private lastReportedAt = 0;
  private offlineEvents: object[] = [];

  constructor(opts: MqttSessionOptions) {
    this.opts = opts;
    this.log = opts.log ?? ((line) => process.stderr.write(`fleetlet: ${line}\n`));
    this.broker = `MQTT broker ${displayUrl(opts.mqtt.url)}`;
    this.events = new TokenBucket(opts.eventsPerSecond ?? 5);
  }

  get connected(): boolean {
    return this.isConnected;
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
    this.started ??= new Promise<void>((resolve, reject) => {
      const timer =
        opts.timeoutMs === undefined ? undefined : setTimeout(() => this.firstConnect?.settle(), opts.timeoutMs);
      this.firstConnect = {
        settle: (err) => {
          this.firstConnect = undefined;
          clearTimeout(timer);
          if (err) reject(err);
          else resolve();
        },
      };
      try {
        this.client = this.createClient();
        this.client.connect();
      } catch (err) {
        this.closed = true;
        this.client?.end(true);
        this.firstConnect.settle(
          err instanceof FleetError
            ? err
            : new FleetError(
                "E_INVALID_CONFIG",
                `mqtt.url ${displayUrl(this.opts.mqtt.url)}: ${(err as Error).message}`,
                { cause: err },
              ),
        );
      }
    });
    return this.started;
  }

  /**
   * Publishes the latest doc, retained; at most one publish per
   * reportedMinIntervalMs while it changes, the last doc always going out.
   * `settled` (an apply reached its outcome) goes out at once: the limit is
   * for the stream of changes during an apply, not for its result.
   */
  publishReported(doc: object, opts: { settled?: boolean } = {}): void {
    if (this.closed) return;
    this.pendingReported = doc;
    if (opts.settled && this.reportedTimer) {
      clearTimeout(this.reportedTimer);
      this.reportedTimer = undefined;
      this.lastReportedAt = 0;
    } else if (opts.settled) this.lastReportedAt = 0;
    this.flushReported();
  }

  /** Publishes an event (not retained); a `ts` is added when missing. Progress events beyond the rate, or while offline, are dropped. */
  publishEvent(ev: { type: string; [k: string]: unknown }): void {
    if (this.closed) return;
    const doc = { ...ev, ts: ev.ts ?? new Date().toISOString() };
    const droppable = isProgressEvent(ev.type);
    if (!this.isConnected) {
      // Lifecycle events wait for the broker, within a bound: the device may be offline for days.
      if (!droppable) this.offlineEvents = [...this.offlineEvents.slice(1 - OFFLINE_EVENTS_MAX), doc];
      return;
    }
    if (!this.events.take() && droppable) return;
    this.send("events", doc, false);
  }

  /** Flushes the pending reported doc, publishes a retained offline status and disconnects (without the will). Idempotent. */
  stop(): Promise<void> {
    this.stopped ??= this.shutdown();
    return this.stopped;
  }

  private async shutdown(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.reportedTimer);
    this.firstConnect?.settle();
    const client = this.client;
    if (!client) return;
    let graceful = false;
    if (this.isConnected) {
      const acks = [this.sendAcked("status", this.statusDoc(false))];
      if (this.pendingReported) acks.unshift(this.sendAcked("reported", this.pendingReported));
      graceful = await withTimeout(Promise.all(acks), STOP_TIMEOUT_MS);
    }
    const ended = new Promise<void>((resolve) => client.end(!graceful, {}, () => resolve()));
    // A broker that stops answering must not hold the agent's shutdown.
    if (!(await withTimeout(ended, STOP_TIMEOUT_MS))) client.stream?.destroy();
  }

  private createClient(): MqttClient {
    const m = this.opts.mqtt;
    this.topics = topicNames(m.prefix);
    const desired = this.desiredTopics(); // checks the device id and group names
    const client = connect(m.url, {
      clientId: this.opts.deviceId,
      protocolVersion: 5,
      clean: false,
      properties: { sessionExpiryInterval: SESSION_EXPIRY_SECONDS },
      keepalive: KEEPALIVE_SECONDS,
      connectTimeout: CONNECT_TIMEOUT_MS,
      reconnectPeriod: 0,
      manualConnect: true,
      resubscribe: false, // we subscribe on every connect ourselves
      // MQTT.js otherwise builds a Buffer for each of the 65536 packet ids at the first publish: ~6 MiB of heap, for good.
      writeCache: false,
      ...(m.username === undefined ? {} : { username: m.username }),
      ...(m.password === undefined ? {} : { password: m.password }),
      ...tlsOptions(m),
      will: this.will(),
    });
    client.on("connect", (connack) => this.guard(() => this.onConnect(connack, desired)));
    client.on("message", (topic, payload) => this.guard(() => this.onMessage(topic, payload)));
    client.on("error", (err) => this.guard(() => this.onError(err)));
    client.on("close", () => this.guard(() => this.onClose()));
    // MQTT 5 brokers say why they drop us; "Session taken over" means two devices share this deviceId.
    client.on("disconnect", ({ reasonCode = 0 }) =>
      this.guard(() =>
        this.logFailure(
          `${this.broker} disconnected ${this.opts.deviceId}: ${(ReasonCodes as Record<number, string>)[reasonCode] || "normal disconnection"} (reason ${reasonCode})`,
        ),
      ),
    );
    return client;
  }

  private onConnect(connack: IConnackPacket, desired: string[]): void {
    const client = this.client!;
    const v5 = client.options.protocolVersion === 5;
    this.isConnected = true;
    this.connectedAt = Date.now();
    this.lastFailure = "";
    this.log(
      `connected to ${this.broker} as ${this.opts.deviceId} (MQTT ${v5 ? "5" : "3.1.1"}${connack.sessionPresent ? ", session resumed" : ""})`,
    );
    this.send("status", this.statusDoc(true), true);
    // With v5, retain handling 1 skips the retained docs when the broker kept the subscription (they were seen already).
    const subscriptions: ISubscriptionMap = Object.fromEntries(
      desired.map((t) => [t, v5 ? { qos: 1, rh: 1 } : { qos: 1 }]),
    );
    client.subscribe(subscriptions, (err, _subs, suback) =>
      this.guard(() => {
        if (err) this.onSubscribeError(err, desired, suback);
      }),
    );
    this.firstConnect?.settle();
    this.opts.onConnectionChange?.(true);
    this.flushReported();
    for (const ev of this.offlineEvents.splice(0)) this.send("events", ev, false);
  }

  private onSubscribeError(err: Error, desired: string[], suback: Parameters<ClientSubscribeCallback>[2]): void {
    // SUBACK codes of 0x80 and up are refusals, one per topic filter in the order asked.
    const refused = desired.filter((_, i) => Number(suback?.granted[i] ?? 0) >= 0x80);
    if (refused.length > 0)
      this.log(
        `${this.broker} refused the subscription to ${refused.join(", ")} (${err.message}); check the broker's ACL for ${this.opts.deviceId}`,
      );
    else this.logFailure(`${this.broker}: subscribing to ${desired.join(", ")} failed: ${err.message}`);
  }

  private onMessage(topic: string, payload: Buffer): void {
    const parsed = this.topics?.parse(topic);
    if (parsed?.channel !== "desired") return;
    if (parsed.kind === "device" ? parsed.name !== this.opts.deviceId : !this.opts.groups.includes(parsed.name)) return;
    this.opts.onDesired({ kind: parsed.kind, name: parsed.name }, payload);
  }

  private onError(err: Error): void {
    const options = this.client!.options;
    if (err instanceof ErrorWithReasonCode && PROTOCOL_REFUSALS.has(err.code) && options.protocolVersion === 5) {
      // The broker speaks 3.1.1 only: stay on 3.1.1 for this session's life. 3.1.1 has no properties; the persistent session is `clean: false` alone.
      options.protocolVersion = 4;
      delete options.properties;
      this.retryAtOnce = true;
      this.log(`${this.broker} refused MQTT 5 (${err.message}); falling back to MQTT 3.1.1`);
      return;
    }
    const failure = describeFailure(this.opts.mqtt, err);
    if (failure.permanent && this.firstConnect) {
      this.closed = true;
      this.client!.end(true);
      this.firstConnect.settle(new FleetError("E_INVALID_CONFIG", failure.message, { cause: err }));
      return;
    }
    this.logFailure(failure.message);
  }

  private onClose(): void {
    if (this.isConnected) {
      this.isConnected = false;
      const lasted = Date.now() - this.connectedAt;
      if (lasted >= STABLE_CONNECTION_MS) this.attempt = 0;
      if (!this.closed) {
        const hint =
          lasted < STABLE_CONNECTION_MS
            ? `; if this repeats, check that no other client connects as ${this.opts.deviceId}`
            : "";
        this.logFailure(`lost the connection to ${this.broker} after ${(lasted / 1000).toFixed(1)} s${hint}`);
      }
      this.opts.onConnectionChange?.(false);
    }
    if (this.closed || this.retryTimer) return;
    const delay = this.retryAtOnce ? 0 : reconnectDelay(this.attempt++);
    this.retryAtOnce = false;
    this.retryTimer = setTimeout(() => this.guard(() => this.reconnect()), delay);
  }

  private reconnect(): void {
    this.retryTimer = undefined;
    if (this.closed || !this.client) return;
    const options = this.client.options;
    options.will = this.will();
    try {
      Object.assign(options, tlsOptions(this.opts.mqtt));
    } catch (err) {
      // A cert being rotated may be briefly unreadable: connect with the material read last time.
      this.logFailure(`${(err as Error).message}; using the TLS files read before`);
    }
    this.client.connect();
  }

  private flushReported(): void {
    if (this.pendingReported === undefined || !this.isConnected || this.reportedTimer) return;
    const wait = this.lastReportedAt + (this.opts.reportedMinIntervalMs ?? 1000) - Date.now();
    if (wait > 0) {
      this.reportedTimer = setTimeout(() => {
        this.reportedTimer = undefined;
        this.guard(() => this.flushReported());
      }, wait);
      return;
    }
    const doc = this.pendingReported;
    this.pendingReported = undefined;
    this.lastReportedAt = Date.now();
    this.send("reported", doc, true);
  }

  private send(channel: DeviceChannel, doc: object, retain: boolean, done?: (err?: Error) => void): void {
    const topic = this.topics!.device(this.opts.deviceId, channel);
    this.client!.publish(topic, JSON.stringify(doc), { qos: 1, retain }, (err) => {
      if (err) this.logFailure(`${this.broker}: publishing to ${topic} failed: ${err.message}`);
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

  private logFailure(message: string): void {
    if (message === this.lastFailure) return; // one line per distinct trouble, not one per retry
    this.lastFailure = message;
    this.log(message);
  }

  /** Runs an MQTT.js callback's work: nothing may throw back into MQTT.js, caller callbacks included. */
  private guard(work: () => void): void {
    try {
      work();
    } catch (err) {
      this.log(`MQTT session (${this.opts.deviceId}): ${(err as Error).stack ?? String(err)}`);
    }
  }
}

/** True when `work` resolved within `ms`; false when it rejected or took longer. */
async function withTimeout(work: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  const settled = work.then(
    () => true,
    () => false,
  );
  try {
    return await Promise.race([settled, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
