/**
 * A SIMULATED fleet, for scale tests and `npm run bench -- fleet`: many
 * devices in one process, each a real Agent (real schemas, real reconcile)
 * on a real MqttSession to a real broker, wired as `fleetlet agent` wires
 * them (device document over group documents, reported on every change and
 * on a heartbeat, events as they happen). Only the container runtime, the
 * store and the registry are simulated (simulated-runtime.ts, simulated-store.ts):
 * no container runs.
 *
 * Devices connect a few at a time (each waits for its CONNACK before the next
 * one starts) so the broker is not stampeded: mosquitto listens with a backlog
 * of 100, and SYNs beyond it are dropped and retried by TCP a second later.
 * ShardedFleet (sharded-fleet.ts) spreads a fleet over child processes.
 */
import { subscribe, unsubscribe } from "node:diagnostics_channel";
import { readFileSync } from "node:fs";
import type { Socket } from "node:net";
import { runBounded } from "../../../agent/bounded.js";
import { FleetError } from "../../../agent/errors.js";
import { reportedChangeKey } from "../../../agent/protocol/reported-change.js";
import { DEFAULT_TOPIC_PREFIX } from "../../../agent/protocol/topics.js";
import { Agent } from "../../../agent/reconcile/agent.js";
import { desiredHandler } from "../../../agent/reconcile/desired-sources.js";
import { resolvePolicy } from "../../../agent/reconcile/policy.js";
import { MqttSession } from "../../../agent/transport/mqtt-session.js";
import { deviceConfig } from "../../../schemas/config.js";
import { SimulatedRuntime } from "./simulated-runtime.js";
import { SimulatedStore } from "./simulated-store.js";

export interface SimulatedFleetOptions {
  /** Broker URL (plain mqtt:// is enough for a simulation). */
  url: string;
  prefix?: string;
  groups: string[];
  deviceIds: string[];
  /** Devices connecting at once; default 50 (mosquitto's listen backlog is 100). */
  connectConcurrency?: number;
  /** How long a device waits for its first CONNACK before it runs on offline (and keeps retrying), as the daemon's 5 s; default 30 s. */
  connectTimeoutMs?: number;
  /** As `fleetlet agent --heartbeat`: reported state republished this often even unchanged; default 0, none (as the daemon). */
  heartbeatMs?: number;
}

export interface SimulatedFleetStats {
  devices: number;
  online: number;
  /** The process's VmRSS, and the CPU time it has used (user + system). */
  rssKiB: number;
  cpuMs: number;
  /** TCP bytes of this process's client sockets (MQTT framing included). */
  bytesIn: number;
  bytesOut: number;
  /** Desired-state messages the devices received, and their payload bytes. */
  desiredIn: number;
  desiredBytesIn: number;
  /** Reported phase → devices, and deployment → devices. */
  phases: Record<string, number>;
  deployments: Record<string, number>;
  /** MQTT session log lines (connection trouble), and the last few of them. */
  logLines: number;
  lastLog: string[];
}

/** The registry simulated documents name their images on (simulated-store.ts "pulls" anything). */
export const SIMULATED_REGISTRY = "registry.local:5000";
/** Every simulated device's policy: the defaults of a config whose one registry is the simulated one. */
const SIMULATED_POLICY = resolvePolicy(deviceConfig.parse({ registries: { [SIMULATED_REGISTRY]: {} } }));

/** The agent version simulated devices report (in `reported.agent.version` and their status). */
export const SIMULATED_AGENT_VERSION = "simulated";

export const simulatedDeviceIds = (n: number, prefix = "sim", from = 0): string[] =>
  Array.from({ length: n }, (_, i) => `${prefix}-${String(from + i).padStart(5, "0")}`);

export function rssKiB(pid: number | "self" = "self"): number {
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? Number.NaN);
}

/** CPU time (user + system) of a process, from /proc/PID/stat, in ms. */
export function cpuMs(pid: number | "self" = "self"): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  // utime and stime are fields 14 and 15 of stat(5), in clock ticks of 10 ms on Linux.
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/** One simulated device: a real agent on a real MQTT session, a simulated runtime under it. */
export class SimulatedDevice {
  readonly runtime = new SimulatedRuntime();
  readonly store = new SimulatedStore();
  readonly agent: Agent;
  readonly session: MqttSession;
  /** Desired-state messages received, and their payload bytes. */
  desiredIn = 0;
  desiredBytesIn = 0;
  private heartbeat: NodeJS.Timeout | undefined;

  constructor(
    readonly deviceId: string,
    opts: SimulatedFleetOptions,
    on: { log: (line: string) => void; connection: (up: boolean) => void },
  ) {
    const prefix = opts.prefix ?? DEFAULT_TOPIC_PREFIX;
    let session: MqttSession | undefined;
    const agent = new Agent({
      deviceId,
      groups: opts.groups,
      runtime: this.runtime,
      store: this.store,
      pull: (ref, { signal }) => this.store.pull(ref, signal),
      version: SIMULATED_AGENT_VERSION,
      policy: SIMULATED_POLICY,
      onEvent: (e) => session?.publishEvent(e),
      onChange: (settled) => session?.publishReported(agent.reported(), { settled }),
    });
    const onDesired = desiredHandler(agent, opts.groups, prefix);
    session = new MqttSession({
      deviceId,
      groups: opts.groups,
      mqtt: { url: opts.url, prefix, insecure: true },
      agentVersion: SIMULATED_AGENT_VERSION,
      reportedChangeKey,
      onDesired: (source, payload) => {
        this.desiredIn++;
        this.desiredBytesIn += payload.length;
        onDesired(source, payload);
      },
      onConnectionChange: on.connection,
      log: on.log,
    });
    this.agent = agent;
    this.session = session;
  }

  /** As the daemon starts: reattach, connect (on the first CONNACK, or offline after the timeout), first report, heartbeat. */
  async start(heartbeatMs: number, connectTimeoutMs: number): Promise<void> {
    await this.agent.reattach();
    await this.session.start({ timeoutMs: connectTimeoutMs });
    this.session.publishReported(this.agent.reported());
    if (heartbeatMs > 0)
      this.heartbeat = setInterval(
        () => this.session.publishReported(this.agent.reported(), { force: true }),
        heartbeatMs,
      );
  }

  async stop(): Promise<void> {
    clearInterval(this.heartbeat);
    await this.agent.stop();
    await this.session.stop();
  }
}

/** A simulated fleet in this process. */
export class SimulatedFleet {
  readonly devices: SimulatedDevice[] = [];
  private online = 0;
  private logLines = 0;
  private readonly lastLog: string[] = [];
  private readonly sockets = new Set<Socket>();
  /** Bytes of the sockets already closed (a reconnect opens a new one). */
  private closedBytes = { in: 0, out: 0 };
  private readonly onSocket = (msg: unknown) => {
    const socket = (msg as { socket: Socket }).socket;
    this.sockets.add(socket);
    socket.once("close", () => {
      this.closedBytes.in += socket.bytesRead;
      this.closedBytes.out += socket.bytesWritten;
      this.sockets.delete(socket);
    });
  };

  private constructor() {
    // Every client socket this process opens from now on: in a shard, the devices' own.
    subscribe("net.client.socket", this.onSocket);
  }

  /**
   * Starts the devices, a few connecting at a time; `onProgress` gets the
   * count connected so far, every 100. Fails (and stops them all) when a
   * device gets no CONNACK within connectTimeoutMs.
   */
  static async start(opts: SimulatedFleetOptions, onProgress?: (online: number) => void): Promise<SimulatedFleet> {
    const fleet = new SimulatedFleet();
    const on = {
      log: (line: string) => fleet.log(line),
      connection: (up: boolean) => {
        fleet.online += up ? 1 : -1;
      },
    };
    fleet.devices.push(...opts.deviceIds.map((id) => new SimulatedDevice(id, opts, on)));
    let started = 0;
    try {
      await runBounded(fleet.devices, opts.connectConcurrency ?? 50, async (d) => {
        const timeoutMs = opts.connectTimeoutMs ?? 30_000;
        await d.start(opts.heartbeatMs ?? 0, timeoutMs);
        // The broker is full or gone: the devices not started yet would only wait as long again.
        if (!d.session.connected)
          throw new FleetError(
            "E_BROKER",
            `simulated device ${d.deviceId} got no CONNACK within ${timeoutMs} ms, after ${fleet.online} devices had connected; the sessions said: ${[...new Set(fleet.lastLog)].join(" | ") || "nothing"}`,
          );
        if (++started % 100 === 0 || started === fleet.devices.length) onProgress?.(fleet.online);
      });
    } catch (err) {
      await fleet.stop();
      throw err;
    }
    return fleet;
  }

  private log(line: string): void {
    this.logLines++;
    if (/^connected to /.test(line)) return; // one per device: counted, not kept
    this.lastLog.push(line);
    if (this.lastLog.length > 5) this.lastLog.shift();
  }

  stats(): SimulatedFleetStats {
    const phases: Record<string, number> = {};
    const deployments: Record<string, number> = {};
    let desiredIn = 0;
    let desiredBytesIn = 0;
    for (const d of this.devices) {
      desiredIn += d.desiredIn;
      desiredBytesIn += d.desiredBytesIn;
      const { phase } = d.agent;
      const deployment = d.store.db.data.desired?.deployment ?? "-";
      phases[phase] = (phases[phase] ?? 0) + 1;
      deployments[deployment] = (deployments[deployment] ?? 0) + 1;
    }
    let bytesIn = this.closedBytes.in;
    let bytesOut = this.closedBytes.out;
    for (const s of this.sockets) {
      bytesIn += s.bytesRead;
      bytesOut += s.bytesWritten;
    }
    return {
      devices: this.devices.length,
      online: this.online,
      rssKiB: rssKiB(),
      cpuMs: cpuMs(),
      bytesIn,
      bytesOut,
      desiredIn,
      desiredBytesIn,
      phases,
      deployments,
      logLines: this.logLines,
      lastLog: [...this.lastLog],
    };
  }

  async stop(): Promise<void> {
    await Promise.all(this.devices.map((d) => d.stop()));
    unsubscribe("net.client.socket", this.onSocket);
    this.sockets.clear();
  }
}
