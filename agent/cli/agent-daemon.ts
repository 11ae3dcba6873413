/**
 * `fleetlet agent`: the daemon. Wires the agent to the MQTT session (desired
 * documents in, reported state and events out) and to the local status
 * endpoint, adopts the containers a previous agent left running, and on
 * SIGTERM stops watching without stopping them (systemd's KillMode=process).
 */
import type { DeviceConfig } from "../../schemas/config.js";
import type { ReportedState } from "../../schemas/reported.js";
import { relaxedSettings } from "../config/relaxed-settings.js";
import { FleetError } from "../errors.js";
import { reportedChangeKey } from "../protocol/reported-change.js";
import type { Agent } from "../reconcile/agent.js";
import { desiredHandler } from "../reconcile/desired-sources.js";
import { agentInstallOf, currentLauncher } from "../system/agent-install.js";
import { loadNative } from "../system/native.js";
import { displayUrl } from "../transport/mqtt-connection.js";
import { MqttSession } from "../transport/mqtt-session.js";
import { createAgent } from "./agent-commands.js";
import { AgentUpdater } from "./agent-update.js";
import type { ParsedArgs } from "./args.js";
import type { CliContext } from "./context.js";
import { releaseSpareWorker } from "./pull-process.js";
import { StatusEndpoint } from "./status-endpoint.js";
import { fleetletVersion } from "./version.js";

/** Tells systemd (Type=notify) how the agent stands; a no-op elsewhere, a warning if it fails. */
function notifySystemd(state: string): void {
  try {
    loadNative().core.sdNotify(state);
  } catch (err) {
    process.stderr.write(`fleetlet: warning: could not notify systemd: ${(err as Error).message}\n`);
  }
}

/** The MQTT session, not connected yet: events of the adoption wait in it for the broker. Undefined without a broker configured. */
function newSession(config: DeviceConfig, agent: Agent): MqttSession | undefined {
  if (!config.mqtt || !config.deviceId) return undefined;
  return new MqttSession({
    deviceId: config.deviceId,
    groups: config.groups,
    mqtt: config.mqtt,
    agentVersion: fleetletVersion(),
    reportedChangeKey,
    onDesired: desiredHandler(agent, config.groups, config.mqtt.prefix),
  });
}

/**
 * Connects the session; undefined when a broker setting is wrong (CA,
 * certificate, credentials): the services still need supervising, so the
 * agent runs on without the broker.
 */
async function connectSession(session: MqttSession, agent: Agent): Promise<MqttSession | undefined> {
  try {
    await session.start({ timeoutMs: 5000 });
    return session;
  } catch (err) {
    const e = err instanceof FleetError ? err : new FleetError("E_INVALID_CONFIG", (err as Error).message);
    agent.lastError = e.toJSON();
    process.stderr.write(`fleetlet: ${e.message} [${e.code}]; running without the broker\n`);
    return undefined;
  }
}

/** Says once, on stderr and as an event (queued until the broker is reached), which protections the config turns off. */
function warnRelaxed(config: DeviceConfig, agent: Agent, session: MqttSession | undefined): void {
  for (const { field, message } of relaxedSettings(config, { requireSigned: agent.requiresSignatures })) {
    process.stderr.write(`fleetlet: warning: ${field}: ${message}\n`);
    session?.publishEvent({ type: "warning", field, message });
  }
}

/** Says the agent is up: READY=1 to systemd, one line on stderr. */
function announce(ctx: CliContext, agent: Agent, session: MqttSession | undefined, endpoint: StatusEndpoint): void {
  const { config } = ctx;
  const adopted = Object.keys(agent.reported().services).length;
  notifySystemd(
    `READY=1\nSTATUS=device ${config.deviceId}: ${adopted} service(s) adopted${session ? "" : ", no broker"}`,
  );
  process.stderr.write(
    `fleetlet agent ${fleetletVersion()}: device ${config.deviceId}, state in ${ctx.root}, status on ${endpoint.describe(config)}${config.mqtt ? `, broker ${displayUrl(config.mqtt.url)}` : ", no broker configured"}\n`,
  );
}

/** Re-executes this process (same pid) through PREFIX/current/bin/fleetlet, with the arguments it was started with. */
function reexecute(prefix: string): never {
  const launcher = currentLauncher(prefix);
  const env = Object.entries(process.env).map(([k, v]) => `${k}=${v}`);
  return loadNative().core.execve(launcher, [launcher, ...process.argv.slice(2)], env);
}

/** The self-update, once the containers are adopted and the broker tried (agent-update.ts). */
async function startUpdater(
  ctx: CliContext,
  agent: Agent,
  session: () => MqttSession | undefined,
  handOver: (why: string) => void,
  reported: () => ReportedState,
): Promise<AgentUpdater> {
  const store = await ctx.store();
  const updater = new AgentUpdater({
    ctx,
    agent,
    install: agentInstallOf(process.execPath),
    desired: () => store.db.data.desired ?? undefined,
    event: (e) => session()?.publishEvent(e),
    changed: () => session()?.publishReported(reported),
    connected: () => session()?.connected === true,
    handOver,
    log: (line) => process.stderr.write(`fleetlet: ${line}\n`),
  });
  updater.start(ctx.config.agentUpdate.commitWithinMs);
  // The stored document's apply may have settled before the updater was there to hear it.
  void agent.idle().then(() => updater.settled());
  return updater;
}

/** `--heartbeat SECONDS`: republish the reported doc this often even unchanged; undefined (the default) for never. */
function heartbeatInterval(option: unknown): number | undefined {
  if (option === undefined) return undefined;
  const seconds = Number(option);
  if (!Number.isFinite(seconds) || seconds < 1)
    throw new FleetError(
      "E_INVALID_ARGUMENT",
      `--heartbeat ${String(option)}: give a number of seconds (1 or more), or leave it out for no heartbeat`,
    );
  return seconds * 1000;
}

/**
 * How the agent's changes reach the broker. Only a move into a settled phase
 * (an apply's outcome) goes out at once; other changes are coalesced. A
 * rejection always goes out, even one that repeats the last: it answers a
 * document just published.
 */
function brokerReports(get: {
  session(): MqttSession | undefined;
  reported(): ReportedState;
  phase(): ReportedState["phase"];
  updater(): AgentUpdater | undefined;
}) {
  let lastPhase: string | undefined;
  let rejected = false;
  return {
    event: (e: { type: string }) => {
      rejected ||= e.type === "rejected";
      get.session()?.publishEvent(e);
    },
    changed: (settled: boolean) => {
      if (settled) get.updater()?.settled();
      const phase = get.phase();
      // A builder: during an apply, the doc is built once, when it is due, not at every step.
      get.session()?.publishReported(get.reported, { settled: settled && phase !== lastPhase, force: rejected });
      lastPhase = phase;
      rejected = false;
    },
  };
}

export async function agentCommand(ctx: CliContext, { options }: ParsedArgs): Promise<number> {
  // Listened for from the start: a stop during start-up must not kill the agent by the signal's default action.
  let handOver: (why: string) => void = () => {};
  const stopRequested = new Promise<string | undefined>((resolve) => {
    process.once("SIGTERM", () => resolve(undefined));
    process.once("SIGINT", () => resolve(undefined));
    handOver = resolve;
  });
  const { config } = ctx;
  if (!config.deviceId)
    throw new FleetError(
      "E_INVALID_CONFIG",
      "deviceId: the agent needs a device id (in the config file or FLEETLET_DEVICE_ID)",
    );
  const heartbeatMs = heartbeatInterval(options.heartbeat);
  // The registry client and the HTTP/TLS stack are a pull worker's, never resident here (pull-process.ts).
  if (process.argv[1]) ctx.pullInWorkers(process.argv[1]);
  let session: MqttSession | undefined;
  let endpoint: StatusEndpoint | undefined;
  let updater: AgentUpdater | undefined;
  const reported = () => endpoint?.reported() ?? agent.reported();
  const toBroker = brokerReports({
    session: () => session,
    reported,
    phase: () => agent.phase,
    updater: () => updater,
  });
  const agent: Agent = await createAgent(ctx, toBroker.event, toBroker.changed);
  endpoint = new StatusEndpoint(agent, {
    changed: () => session?.publishReported(reported),
    event: (e) => session?.publishEvent(e),
    warn: (line) => process.stderr.write(`fleetlet: ${line}\n`),
  });
  session = newSession(config, agent);
  warnRelaxed(config, agent, session);
  await endpoint.start(config);
  await agent.reattach();
  session = session && (await connectSession(session, agent));
  updater = await startUpdater(ctx, agent, () => session, handOver, reported);
  session?.publishReported(reported(), { settled: true });
  // Off by default: the reported doc goes out when it changes, liveness is the keepalive's and the will's.
  const heartbeat =
    heartbeatMs === undefined
      ? undefined
      : setInterval(() => session?.publishReported(reported(), { force: true }), heartbeatMs);
  announce(ctx, agent, session, endpoint);
  const handingOver = await stopRequested;
  clearInterval(heartbeat);
  updater.stop();
  notifySystemd(handingOver ? `STATUS=${handingOver}` : "STOPPING=1");
  await agent.stop();
  await session?.stop();
  await endpoint.close();
  releaseSpareWorker(); // a waiting pull worker exits; an exec would leave it unreaped
  if (handingOver && updater.install) {
    process.stderr.write(`fleetlet: ${handingOver}; detached from the containers at ${new Date().toISOString()}\n`);
    reexecute(updater.install.prefix);
  }
  return 0;
}
