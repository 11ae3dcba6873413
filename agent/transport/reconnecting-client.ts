/**
 * The agent's MQTT client and its connection's life: one persistent session
 * per device (clientId = deviceId, clean: false), the first connect that
 * start() waits for, the fallback to MQTT 3.1.1, failures logged once each,
 * and an end that does not let a silent broker hold the agent's shutdown.
 *
 * Reconnects are ours, not MQTT.js's: its reconnectPeriod is a fixed interval,
 * and a fleet of devices coming back after a broker outage must not retry in
 * lockstep. So MQTT.js runs with reconnectPeriod 0 and every 'close' schedules
 * one connect() after an exponential, jittered delay.
 */
import {
  type ClientSubscribeCallback,
  connect,
  type IClientOptions,
  type IConnackPacket,
  type ISubscriptionMap,
  type MqttClient,
  ReasonCodes,
} from "mqtt";
import { DEFAULT_MQTT_KEEPALIVE_SEC } from "../../schemas/config.js";
import { FleetError } from "../errors.js";
import {
  describeFailure,
  displayUrl,
  isProtocolRefusal,
  type MqttSettings,
  sendAtOnce,
  tlsOptions,
} from "./mqtt-connection.js";
import { TlsResumption, tlsIdentity } from "./tls-resumption.js";

const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 60_000;
/** Only a connection that lasted this long resets the backoff, so a flapping one (a twin taking the session over) keeps backing off. */
const STABLE_CONNECTION_MS = 10_000;
const SESSION_EXPIRY_SECONDS = 86_400;
const CONNECT_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 5_000;

/** Delay before reconnect attempt `attempt` (0-based): exponential, with the upper half jittered. */
export function reconnectDelay(attempt: number, random: () => number = Math.random): number {
  const ceiling = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** attempt);
  return ceiling / 2 + random() * (ceiling / 2);
}

export interface ReconnectingClientOptions {
  deviceId: string;
  mqtt: MqttSettings;
  log: (line: string) => void;
  /** The last will, asked for before every connect (it is stamped with the connection's time). */
  will: () => NonNullable<IClientOptions["will"]>;
  /** Each CONNACK, before the first connect() resolves: publish the status, subscribe. `sessionPresent`: the broker kept our session. */
  onConnect: (v5: boolean, sessionPresent: boolean) => void;
  /** After onConnect (true), and when a connection is lost (false). */
  onConnectionChange: (connected: boolean) => void;
  onMessage: (topic: string, payload: Buffer) => void;
}

export class ReconnectingClient {
  /** "MQTT broker <url>", the subject of every connection message. */
  readonly broker: string;
  private client: MqttClient | undefined;
  private firstConnect: { settle: (err?: Error) => void } | undefined;
  private isConnected = false;
  private isClosed = false;
  private attempt = 0;
  private connectedAt = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  private retryAtOnce = false;
  private lastFailure = "";
  private readonly tls = new TlsResumption();

  constructor(private readonly opts: ReconnectingClientOptions) {
    this.broker = `MQTT broker ${displayUrl(opts.mqtt.url)}`;
  }

  get connected(): boolean {
    return this.isConnected;
  }

  /** Set by stop() or by a first connection that can never succeed: no more connects or publishes. */
  get closed(): boolean {
    return this.isClosed;
  }

  /**
   * Connects. Resolves on the first CONNACK, or after `timeoutMs` without one.
   * Rejects with E_INVALID_CONFIG, and gives up, when `prepare` (run first)
   * throws, the options are unusable or the first connection is refused for
   * a reason retrying cannot fix.
   */
  connect(timeoutMs: number | undefined, prepare: () => void): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timer = timeoutMs === undefined ? undefined : setTimeout(() => this.firstConnect?.settle(), timeoutMs);
      this.firstConnect = {
        settle: (err) => {
          this.firstConnect = undefined;
          clearTimeout(timer);
          if (err) reject(err);
          else resolve();
        },
      };
      try {
        prepare();
        this.client = this.createClient();
        this.connectClient();
      } catch (err) {
        this.isClosed = true;
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
  }

  publish(topic: string, payload: string, retain: boolean, done: (err?: Error) => void): void {
    this.client!.publish(topic, payload, { qos: 1, retain }, done);
  }

  subscribe(topics: ISubscriptionMap, done: ClientSubscribeCallback): void {
    this.client!.subscribe(topics, done);
  }

  /**
   * Ends the connection for good. When connected, `lastWords` publishes what
   * must still go out, and the disconnect leaves the will unsent if the
   * broker acknowledged it in time. A broker that stops answering must not
   * hold the agent's shutdown.
   */
  async stop(lastWords: () => Promise<unknown>): Promise<void> {
    this.isClosed = true;
    clearTimeout(this.retryTimer);
    this.firstConnect?.settle();
    const client = this.client;
    if (!client) return;
    let graceful = false;
    if (this.isConnected) graceful = await withTimeout(lastWords(), STOP_TIMEOUT_MS);
    const ended = new Promise<void>((resolve) => client.end(!graceful, {}, () => resolve()));
    if (!(await withTimeout(ended, STOP_TIMEOUT_MS))) client.stream?.destroy();
  }

  logFailure(message: string): void {
    if (message === this.lastFailure) return; // one line per distinct trouble, not one per retry
    this.lastFailure = message;
    this.opts.log(message);
  }

  /** Runs an MQTT.js callback's work: nothing may throw back into MQTT.js, caller callbacks included. */
  guard(work: () => void): void {
    try {
      work();
    } catch (err) {
      this.opts.log(`MQTT session (${this.opts.deviceId}): ${(err as Error).stack ?? String(err)}`);
    }
  }

  private createClient(): MqttClient {
    const m = this.opts.mqtt;
    const client = connect(m.url, {
      clientId: this.opts.deviceId,
      protocolVersion: 5,
      clean: false,
      properties: { sessionExpiryInterval: SESSION_EXPIRY_SECONDS },
      keepalive: m.keepaliveSec ?? DEFAULT_MQTT_KEEPALIVE_SEC,
      connectTimeout: CONNECT_TIMEOUT_MS,
      reconnectPeriod: 0,
      manualConnect: true,
      resubscribe: false, // we subscribe on every connect ourselves
      // MQTT 5: a topic is named once per connection, then by a 2-byte alias (about 30 bytes saved per publish).
      autoAssignTopicAlias: true,
      // MQTT.js otherwise builds a Buffer for each of the 65536 packet ids at the first publish: ~6 MiB of heap, for good.
      writeCache: false,
      ...(m.username === undefined ? {} : { username: m.username }),
      ...(m.password === undefined ? {} : { password: m.password }),
      ...tlsOptions(m),
      will: this.opts.will(),
    });
    client.on("connect", (connack) => this.guard(() => this.onConnect(connack)));
    client.on("message", (topic, payload) => this.guard(() => this.opts.onMessage(topic, payload)));
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

  private onConnect(connack: IConnackPacket): void {
    const v5 = this.client!.options.protocolVersion === 5;
    this.isConnected = true;
    this.connectedAt = Date.now();
    this.lastFailure = "";
    this.opts.log(
      `connected to ${this.broker} as ${this.opts.deviceId} (MQTT ${v5 ? "5" : "3.1.1"}${connack.sessionPresent ? ", session resumed" : ""}${this.tls.resumed(this.client!.stream) ? ", TLS resumed" : ""})`,
    );
    this.opts.onConnect(v5, connack.sessionPresent);
    this.firstConnect?.settle();
    this.opts.onConnectionChange(true);
  }

  private onError(err: Error): void {
    const options = this.client!.options;
    if (isProtocolRefusal(err) && options.protocolVersion === 5) {
      // The broker speaks 3.1.1 only: stay on 3.1.1 for this session's life. 3.1.1 has no properties; the persistent session is `clean: false` alone.
      options.protocolVersion = 4;
      delete options.properties;
      this.retryAtOnce = true;
      this.opts.log(`${this.broker} refused MQTT 5 (${err.message}); falling back to MQTT 3.1.1`);
      return;
    }
    const failure = describeFailure(this.opts.mqtt, err);
    if (failure.permanent && this.firstConnect) {
      this.isClosed = true;
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
      if (!this.isClosed) {
        const hint =
          lasted < STABLE_CONNECTION_MS
            ? `; if this repeats, check that no other client connects as ${this.opts.deviceId}`
            : "";
        this.logFailure(`lost the connection to ${this.broker} after ${(lasted / 1000).toFixed(1)} s${hint}`);
      }
      this.opts.onConnectionChange(false);
    }
    if (this.isClosed || this.retryTimer) return;
    const delay = this.retryAtOnce ? 0 : reconnectDelay(this.attempt++);
    this.retryAtOnce = false;
    this.retryTimer = setTimeout(() => this.guard(() => this.reconnect()), delay);
  }

  private reconnect(): void {
    this.retryTimer = undefined;
    if (this.isClosed || !this.client) return;
    const options = this.client.options;
    options.will = this.opts.will();
    try {
      Object.assign(options, tlsOptions(this.opts.mqtt));
    } catch (err) {
      // A cert being rotated may be briefly unreadable: connect with the material read last time.
      this.logFailure(`${(err as Error).message}; using the TLS files read before`);
    }
    this.connectClient();
  }

  /** One connect, offering the TLS session the broker gave last when it was given under the same URL and TLS files. */
  private connectClient(): void {
    const client = this.client!;
    const options = client.options as IClientOptions & { session?: Buffer };
    const identity = tlsIdentity(this.opts.mqtt.url, options);
    const session = this.tls.offer(identity);
    if (session) options.session = session;
    else delete options.session;
    client.connect();
    this.tls.watch(client.stream, identity);
    sendAtOnce(client.stream);
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
